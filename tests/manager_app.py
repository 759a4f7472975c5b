"""The app of the process-manager tests: ``/work?key=K&seconds=S`` adds a task that sleeps S
seconds, then appends ``K PID`` to ``$BGTASKS_TEST_DIR/runs.log``; ``&kind=async`` makes it an
async task. The response carries the PID of the worker that answered.

``app`` is the middleware (detached when ``BGTASKS_TEST_DETACHED=1``, ``shutdown_timeout``
60 s unless ``BGTASKS_TEST_SHUTDOWN`` says otherwise); ``starlette`` is a Starlette app with its
own ``BackgroundTask`` and no bgtasks middleware.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from urllib.parse import parse_qs

import anyio
from helpers import answer_lifespan
from starlette.applications import Starlette
from starlette.background import BackgroundTask
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from bgtasks import BackgroundTasksMiddleware, Receive, Scope, Send, get_background_tasks

logging.basicConfig(level=logging.INFO, format="%(process)d %(name)s %(levelname)s %(message)s")
DIR = Path(os.environ.get("BGTASKS_TEST_DIR", "."))


def _append(key: str) -> None:
    with open(DIR / "runs.log", "a") as log:
        log.write(f"{key} {os.getpid()}\n")


def slow_task(key: str, seconds: float) -> None:
    time.sleep(seconds)
    _append(key)


async def slow_async_task(key: str, seconds: float) -> None:
    await anyio.sleep(seconds)
    _append(key)


async def endpoint(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] == "lifespan":
        return await answer_lifespan(receive, send)
    query = parse_qs(scope["query_string"].decode())
    key, seconds = query["key"][0], float(query["seconds"][0])
    task = slow_async_task if query.get("kind") == ["async"] else slow_task
    get_background_tasks(scope).add_task(task, key, seconds)
    body = f"{key} {os.getpid()}".encode()
    headers = [(b"content-type", b"text/plain"), (b"content-length", b"%d" % len(body))]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": body})


app = BackgroundTasksMiddleware(
    endpoint,
    detached=os.environ.get("BGTASKS_TEST_DETACHED") == "1",
    shutdown_timeout=float(os.environ.get("BGTASKS_TEST_SHUTDOWN", "60")),
)


async def _work(request: Request) -> PlainTextResponse:
    key, seconds = request.query_params["key"], float(request.query_params["seconds"])
    task = BackgroundTask(slow_task, key, seconds)
    return PlainTextResponse(f"{key} {os.getpid()}", background=task)


starlette = Starlette(routes=[Route("/work", _work)])
