"""The web app of the broker tests: ``/ok?name=N`` enqueues ``record(N)`` and answers 200;
``/fail?name=N`` enqueues it, then answers 400, so nothing may be sent."""

from __future__ import annotations

import logging
from urllib.parse import parse_qs

from celery_app import app as celery_app
from celery_app import record

from bgtasks import BackgroundTasksMiddleware, Receive, Scope, Send, get_background_tasks
from bgtasks.celery import CeleryDispatcher

logging.basicConfig(level=logging.INFO, format="%(name)s %(levelname)s %(message)s")


async def endpoint(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            await send({"type": message["type"] + ".complete"})
            if message["type"] == "lifespan.shutdown":
                return
    query = parse_qs(scope["query_string"].decode())
    name = query.get("name", ["x"])[0]
    get_background_tasks(scope).enqueue(record, name, float(query.get("seconds", ["0"])[0]))
    status = 400 if scope["path"] == "/fail" else 200
    body = f"{status} {name}".encode()
    headers = [(b"content-type", b"text/plain"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


celery = BackgroundTasksMiddleware(endpoint, dispatcher=CeleryDispatcher(celery_app))
