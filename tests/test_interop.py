"""``background=`` both ways: other frameworks' tasks in our Response, ours in theirs."""

from __future__ import annotations

from typing import Any

import pytest
import starlette.background
import starlette.responses
from fastapi import FastAPI
from helpers import Recorder, http_scope
from litestar import Litestar, get
from litestar import Response as LitestarResponse
from starlette.applications import Starlette
from starlette.routing import Route

from bgtasks import BackgroundTasks, Response


async def empty_request() -> dict[str, Any]:
    return {"type": "http.request", "body": b"", "more_body": False}


class AfterBody:
    """Tasks that record whether the response body had been sent when they ran."""

    def __init__(self, send: Recorder) -> None:
        self.send = send
        self.seen: list[tuple[str, bool]] = []

    async def async_task(self, label: str) -> None:
        self.seen.append((label, "http.response.body" in self.send.types))

    def sync_task(self, label: str) -> None:
        self.seen.append((label, "http.response.body" in self.send.types))


async def test_starlette_background_tasks_run_in_our_response() -> None:
    send = Recorder()
    after = AfterBody(send)
    theirs = starlette.background.BackgroundTasks()
    theirs.add_task(after.async_task, "async")
    theirs.add_task(after.sync_task, "sync")
    await Response(b"ok", background=theirs)(http_scope(), empty_request, send)
    assert after.seen == [("async", True), ("sync", True)]


async def test_starlette_single_background_task_runs_in_our_response() -> None:
    send = Recorder()
    after = AfterBody(send)
    theirs = starlette.background.BackgroundTask(after.sync_task, "one")
    await Response(b"ok", background=theirs)(http_scope(), empty_request, send)
    assert after.seen == [("one", True)]


def _ours(after: AfterBody) -> BackgroundTasks:
    tasks = BackgroundTasks()
    tasks.add_task(after.sync_task, "sync")
    tasks.add_task(after.async_task, "async")
    return tasks


async def test_our_tasks_run_as_background_of_a_starlette_response() -> None:
    send = Recorder()
    after = AfterBody(send)

    async def endpoint(request: Any) -> starlette.responses.Response:
        return starlette.responses.PlainTextResponse("hi", background=_ours(after))

    app = Starlette(routes=[Route("/", endpoint)])
    await app(http_scope(), empty_request, send)
    assert send.body == b"hi"
    assert after.seen == [("sync", True), ("async", True)]


async def test_our_tasks_run_as_background_of_a_fastapi_response() -> None:
    send = Recorder()
    after = AfterBody(send)
    app = FastAPI()

    @app.get("/")
    def endpoint() -> starlette.responses.Response:  # a sync endpoint: runs in a thread
        return starlette.responses.JSONResponse({"ok": True}, background=_ours(after))

    await app(http_scope(), empty_request, send)
    assert send.body == b'{"ok":true}'
    assert after.seen == [("sync", True), ("async", True)]


async def test_our_tasks_run_as_background_of_a_litestar_response() -> None:
    send = Recorder()
    after = AfterBody(send)

    @get("/", sync_to_thread=False)
    def endpoint() -> LitestarResponse[str]:
        return LitestarResponse("hi", background=_ours(after))  # type: ignore[arg-type]

    app = Litestar(route_handlers=[endpoint])
    await app(http_scope(), empty_request, send)
    assert send.body == b"hi"
    assert after.seen == [("sync", True), ("async", True)]


@pytest.mark.parametrize("fail_first", [True, False])
async def test_failing_task_inside_starlette_still_lets_ours_all_run(fail_first: bool) -> None:
    # Starlette raises what the background raises; ours raises only after every task ran.
    send = Recorder()
    after = AfterBody(send)
    tasks = BackgroundTasks()
    if fail_first:
        tasks.add_task(int, "not a number")
    tasks.add_task(after.sync_task, "ran")
    response = starlette.responses.Response("x", background=tasks)
    if fail_first:
        with pytest.raises(ValueError):
            await response(http_scope(), empty_request, send)
    else:
        await response(http_scope(), empty_request, send)
    assert after.seen == [("ran", True)]
