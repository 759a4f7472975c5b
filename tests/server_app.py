"""ASGI apps that the server tests serve in a real server process.

Tasks and tests coordinate through files in ``BGTASKS_TEST_DIR``: a task waits for
``<name>.go``, which the test creates only after the response has arrived, and then writes
``<name>.done``. Waits are bounded, so a broken server fails a test instead of hanging it.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import anyio
from helpers import answer_lifespan

from bgtasks import (
    BackgroundTask,
    BackgroundTasksMiddleware,
    Receive,
    Response,
    Scope,
    Send,
    get_background_tasks,
)

logging.basicConfig(level=logging.INFO, format="%(name)s %(levelname)s %(message)s")

DIR = Path(os.environ.get("BGTASKS_TEST_DIR", "."))
WAIT_LIMIT = 60.0


async def wait_for_flag(name: str) -> None:
    with anyio.fail_after(WAIT_LIMIT):
        while not (DIR / f"{name}.go").exists():
            await anyio.sleep(0.01)
    (DIR / f"{name}.done").write_text("done")


def wait_for_flag_sync(name: str) -> None:
    deadline = time.monotonic() + WAIT_LIMIT
    while not (DIR / f"{name}.go").exists():
        if time.monotonic() > deadline:
            raise TimeoutError(name)
        time.sleep(0.01)
    (DIR / f"{name}.done").write_text("done")


def fail_on_purpose(name: str) -> None:
    (DIR / f"{name}.ran").write_text("ran")
    raise RuntimeError(f"task {name} failed on purpose")


class Custom(BaseException):
    pass


async def fail_with_base_exception(name: str) -> None:
    (DIR / f"{name}.ran").write_text("ran")
    raise Custom(f"task {name} raised a BaseException on purpose")


lifespan = answer_lifespan  # these apps have nothing to start or stop


async def app(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] == "lifespan":
        return await lifespan(receive, send)
    name = parse_qs(scope["query_string"].decode()).get("name", ["task"])[0]
    background = {
        "/wait": BackgroundTask(wait_for_flag, name),
        "/wait-sync": BackgroundTask(wait_for_flag_sync, name),
        "/fail": BackgroundTask(fail_on_purpose, name),
    }.get(scope["path"])
    await Response(f"ok {scope['path']}", background=background)(scope, receive, send)


async def sleep_then_mark(name: str, seconds: float) -> None:
    await anyio.sleep(seconds)
    (DIR / f"{name}.done").write_text("done")


def sleep_and_note_thread(name: str, seconds: float) -> None:
    time.sleep(seconds)
    (DIR / f"{name}.thread").write_text(str(threading.get_ident()))


def block_in_io(name: str) -> None:
    """A sync task stuck in I/O far longer than any shutdown_timeout."""
    (DIR / f"{name}.started").write_text("started")
    time.sleep(120)
    (DIR / f"{name}.done").write_text("done")


async def raw_endpoint(scope: Scope, receive: Receive, send: Send) -> None:
    """A hand-written ASGI app with no bgtasks Response: it only adds tasks."""
    if scope["type"] == "lifespan":
        return await lifespan(receive, send)
    query = parse_qs(scope["query_string"].decode())
    name = query.get("name", ["task"])[0]
    tasks = get_background_tasks(scope)
    if scope["path"] == "/wait":
        tasks.add_task(wait_for_flag, name)
    elif scope["path"] == "/fail":
        tasks.add_task(fail_on_purpose, name)
    elif scope["path"] == "/sleep-sync":
        tasks.add_task(sleep_and_note_thread, name, float(query["seconds"][0]))
    elif scope["path"] == "/fail-base":
        tasks.add_task(fail_with_base_exception, name)
    elif scope["path"] == "/block-sync":
        tasks.add_task(block_in_io, name)
    elif scope["path"] == "/sleep":
        tasks.add_task(sleep_then_mark, name, float(query["seconds"][0]))
    body = f"ok {scope['path']}".encode()
    headers = [(b"content-type", b"text/plain"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": body})


attached = BackgroundTasksMiddleware(raw_endpoint)
detached = BackgroundTasksMiddleware(raw_endpoint, detached=True)
bounded_attached = BackgroundTasksMiddleware(raw_endpoint, shutdown_timeout=1)
two_pending = BackgroundTasksMiddleware(raw_endpoint, detached=True, max_pending=2)
bounded_detached = BackgroundTasksMiddleware(raw_endpoint, detached=True, shutdown_timeout=1)


def _starlette_app() -> Any:
    """Starlette's own background tasks, for the shutdown comparison."""
    from starlette.applications import Starlette
    from starlette.background import BackgroundTask as StarletteTask
    from starlette.requests import Request
    from starlette.responses import PlainTextResponse
    from starlette.routing import Route

    async def sleep(request: Request) -> PlainTextResponse:
        name, seconds = request.query_params["name"], float(request.query_params["seconds"])
        task = StarletteTask(sleep_then_mark, name, seconds)
        return PlainTextResponse("ok /sleep", background=task)

    return Starlette(routes=[Route("/sleep", sleep)])


starlette = _starlette_app()
