"""The ASGI apps that benchmarks/e2e.py serves with uvicorn, one per (implementation, variant).

``write_log`` is the seed example: open a file, append a line, close it. ``BGTASKS_BENCH_LOG``
names the file, so the harness can count that every task ran.
"""

# No `from __future__ import annotations`: FastAPI reads the endpoints' annotations at runtime.

import os
import time
from typing import Any

import anyio.lowlevel
import fastapi
import starlette.background
import starlette.responses

import bgtasks
import bgtasks.fastapi

LOG_PATH = os.environ.get("BGTASKS_BENCH_LOG", os.devnull)
BODY = b"Hello, world!"
START = {
    "type": "http.response.start",
    "status": 200,
    "headers": [(b"content-length", b"13")],
}
BODY_MESSAGE = {"type": "http.response.body", "body": BODY}


def write_log(message: str) -> None:
    with open(LOG_PATH, "a") as file:
        file.write(message + "\n")


def sync_noop() -> None:
    return None


async def async_noop() -> None:
    return None


async def answer_lifespan(receive: Any, send: Any) -> None:
    while True:
        message = await receive()
        await send({"type": message["type"] + ".complete"})
        if message["type"] == "lifespan.shutdown":
            return


# The raw floor: a hand-written ASGI app.


async def raw(scope: Any, receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        return await answer_lifespan(receive, send)
    await send(START)
    await send(BODY_MESSAGE)


async def raw_inline_write_log(scope: Any, receive: Any, send: Any) -> None:
    """The one-core floor: the task's own work, on the loop, right after the response."""
    if scope["type"] == "lifespan":
        return await answer_lifespan(receive, send)
    await send(START)
    await send(BODY_MESSAGE)
    write_log(scope["path"])


def _app(response: Any, tasks: Any, func: Any = None, with_path: bool = False) -> Any:
    """An endpoint that adds ``func`` (with the path, if asked) and replies with ``response``."""

    async def app(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            return await answer_lifespan(receive, send)
        background = None
        if func is not None:
            background = tasks()
            if with_path:
                background.add_task(func, scope["path"])
            else:
                background.add_task(func)
        await response(BODY, background=background)(scope, receive, send)

    return app


_S = (starlette.responses.Response, starlette.background.BackgroundTasks)
_B = (bgtasks.Response, bgtasks.BackgroundTasks)

starlette_none = _app(*_S)
starlette_async = _app(*_S, async_noop)
starlette_write_log = _app(*_S, write_log, with_path=True)
starlette_sync_noop = _app(*_S, sync_noop)
bgtasks_none = _app(*_B)
bgtasks_async = _app(*_B, async_noop)
bgtasks_write_log = _app(*_B, write_log, with_path=True)
bgtasks_sync_noop = _app(*_B, sync_noop)


# The middleware paths: a raw endpoint that adds its task through get_background_tasks.


def _endpoint(func: Any) -> Any:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            return await answer_lifespan(receive, send)
        bgtasks.get_background_tasks(scope).add_task(func, scope["path"])
        await send(START)
        await send(BODY_MESSAGE)

    return app


mw_attached_write_log = bgtasks.BackgroundTasksMiddleware(_endpoint(write_log))
mw_detached_write_log = bgtasks.BackgroundTasksMiddleware(_endpoint(write_log), detached=True)


# Sustained load: a 5 ms sync task per request, a stand-in for a database write.


def db_write(message: str) -> None:
    time.sleep(0.005)
    write_log(message)


def _starlette_db_write() -> Any:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            return await answer_lifespan(receive, send)
        task = starlette.background.BackgroundTask(db_write, scope["path"])
        await starlette.responses.Response(BODY, background=task)(scope, receive, send)

    return app


starlette_db_write = _starlette_db_write()
mw_attached_db_write = bgtasks.BackgroundTasksMiddleware(_endpoint(db_write))
mw_detached_db_write = bgtasks.BackgroundTasksMiddleware(_endpoint(db_write), detached=True)


# Async tasks (issue 16): a task that awaits one checkpoint, then appends a line.


async def write_log_async(message: str) -> None:
    await anyio.lowlevel.checkpoint()
    write_log(message)


async def raw_inline_write_log_async(scope: Any, receive: Any, send: Any) -> None:
    """The floor for an async task: awaited inline, right after the response."""
    if scope["type"] == "lifespan":
        return await answer_lifespan(receive, send)
    await send(START)
    await send(BODY_MESSAGE)
    await write_log_async(scope["path"])


starlette_write_log_async = _app(*_S, write_log_async, with_path=True)
bgtasks_write_log_async = _app(*_B, write_log_async, with_path=True)
mw_attached_write_log_async = bgtasks.BackgroundTasksMiddleware(_endpoint(write_log_async))
mw_detached_write_log_async = bgtasks.BackgroundTasksMiddleware(
    _endpoint(write_log_async), detached=True
)


# FastAPI, a trivial async endpoint: its own BackgroundTasks, bgtasks.fastapi's, and the
# middleware with get_background_tasks(request).


def _fastapi_apps(func: Any) -> tuple[Any, Any, Any]:
    own, ours, middleware = fastapi.FastAPI(), fastapi.FastAPI(), fastapi.FastAPI()

    @own.get("/")
    async def own_endpoint(request: fastapi.Request, tasks: fastapi.BackgroundTasks) -> str:
        tasks.add_task(func, request.url.path)
        return "ok"

    @ours.get("/")
    async def ours_endpoint(
        request: fastapi.Request, tasks: bgtasks.fastapi.BackgroundTasks
    ) -> str:
        tasks.add_task(func, request.url.path)
        return "ok"

    @middleware.get("/")
    async def middleware_endpoint(request: fastapi.Request) -> str:
        bgtasks.get_background_tasks(request).add_task(func, request.url.path)
        return "ok"

    middleware.add_middleware(bgtasks.BackgroundTasksMiddleware)
    return own, ours, middleware


fastapi_own_write_log, fastapi_ours_write_log, fastapi_mw_write_log = _fastapi_apps(write_log)
fastapi_own_write_log_async, fastapi_ours_write_log_async, fastapi_mw_write_log_async = (
    _fastapi_apps(write_log_async)
)
