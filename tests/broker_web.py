"""The web app of the broker tests: ``/ok?name=N`` enqueues ``record(N)`` and answers 200;
``/fail?name=N`` enqueues it, then answers 400, so nothing may be sent."""

from __future__ import annotations

import logging
from typing import Any
from urllib.parse import parse_qs

from celery_app import app as celery_app
from celery_app import record
from helpers import answer_lifespan

from bgtasks import BackgroundTasksMiddleware, Receive, Scope, Send, get_background_tasks
from bgtasks.celery import CeleryDispatcher

logging.basicConfig(level=logging.INFO, format="%(name)s %(levelname)s %(message)s")


def _endpoint(task: Any, keywords: bool) -> Any:
    async def endpoint(scope: Scope, receive: Receive, send: Send) -> None:
        await _serve(scope, receive, send, task, keywords)

    return endpoint


async def _serve(scope: Scope, receive: Receive, send: Send, task: Any, keywords: bool) -> None:
    if scope["type"] == "lifespan":
        return await answer_lifespan(receive, send)
    query = parse_qs(scope["query_string"].decode())
    name = query.get("name", ["x"])[0]
    seconds = float(query.get("seconds", ["0"])[0])
    if keywords:  # Procrastinate tasks take keyword arguments only
        get_background_tasks(scope).enqueue(task, name=name, seconds=seconds)
    else:
        get_background_tasks(scope).enqueue(task, name, seconds)
    status = 400 if scope["path"] == "/fail" else 200
    body = f"{status} {name}".encode()
    headers = [(b"content-type", b"text/plain"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


celery = BackgroundTasksMiddleware(
    _endpoint(record, keywords=False), dispatcher=CeleryDispatcher(celery_app)
)


def _procrastinate() -> Any:
    import procrastinate_app

    from bgtasks.procrastinate import ProcrastinateDispatcher

    dispatcher = ProcrastinateDispatcher(procrastinate_app.app, pool=procrastinate_app.pool)
    return BackgroundTasksMiddleware(
        _endpoint(procrastinate_app.record, keywords=True), dispatcher=dispatcher
    )


procrastinate = _procrastinate()  # hypercorn looks apps up with eval, not module __getattr__
