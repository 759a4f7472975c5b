"""bgtasks.fastapi: the drop-in BackgroundTasks dependency, with the real FastAPI and its own
TestClient on asyncio and trio."""

# No `from __future__ import annotations`: FastAPI reads the endpoints' annotations at runtime.
import contextvars
import logging
import threading
from collections.abc import Iterator
from typing import Annotated, Any

import anyio
import pytest
from fastapi import Depends, FastAPI, HTTPException
from fastapi.responses import PlainTextResponse
from fastapi.testclient import TestClient
from helpers import Lifespan, Recorder, SentTypes, http_scope

import bgtasks
from bgtasks import BackgroundTasksMiddleware
from bgtasks.fastapi import BackgroundTasks

BACKENDS = ["asyncio", "trio"]
request_id: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="unset")


def get(app: Any, path: str, backend: str) -> int:
    with TestClient(app, backend=backend) as client:
        return client.get(path).status_code


@pytest.mark.parametrize("backend", BACKENDS)
def test_parameter_is_one_bgtasks_list_shared_with_dependencies(backend: str) -> None:
    seen: list[Any] = []

    def dependency(tasks: BackgroundTasks) -> Any:
        return tasks

    api = FastAPI()

    @api.get("/")
    def endpoint(
        tasks: BackgroundTasks, from_dependency: Annotated[Any, Depends(dependency)]
    ) -> str:
        seen.extend([tasks, from_dependency])
        return "ok"

    assert get(api, "/", backend) == 200
    assert isinstance(seen[0], bgtasks.BackgroundTasks)
    assert seen[0] is seen[1]


@pytest.mark.parametrize("backend", BACKENDS)
def test_tasks_run_after_the_response_before_yield_dependencies_close(backend: str) -> None:
    log: list[str] = []

    def database() -> Iterator[dict[str, bool]]:
        session = {"open": True}
        yield session
        session["open"] = False
        log.append("session closed")

    api = FastAPI()
    app = SentTypes(api)

    def write(session: dict[str, bool]) -> None:
        body_sent = app.types[-1:] == ["http.response.body"]
        log.append(f"task: body sent {body_sent}, session open {session['open']}")

    @api.post("/")
    async def endpoint(tasks: BackgroundTasks, session: Annotated[Any, Depends(database)]) -> str:
        tasks.add_task(write, session)
        return "ok"

    with TestClient(app, backend=backend) as client:
        assert client.post("/").status_code == 200
    assert log == ["task: body sent True, session open True", "session closed"]


@pytest.mark.parametrize("backend", BACKENDS)
def test_http_exception_drops_the_tasks_and_names_them(
    backend: str, caplog: pytest.LogCaptureFixture
) -> None:
    log: list[str] = []
    api = FastAPI()

    @api.post("/signup/{email}")
    def signup(email: str, tasks: BackgroundTasks) -> str:
        tasks.add_task(log.append, "welcome sent")
        if "@" not in email:
            raise HTTPException(400, "not an email")
        return "ok"

    assert get_post(api, "/signup/not-an-email", backend) == 400
    assert log == []
    assert "dropped; never started: [builtins.list.append]" in caplog.text


def get_post(app: Any, path: str, backend: str) -> int:
    with TestClient(app, backend=backend) as client:
        return client.post(path).status_code


@pytest.mark.parametrize("backend", BACKENDS)
def test_validation_error_drops_tasks_added_by_a_dependency(
    backend: str, caplog: pytest.LogCaptureFixture
) -> None:
    log: list[str] = []

    def audit(tasks: BackgroundTasks) -> None:
        tasks.add_task(log.append, "audited")

    api = FastAPI(dependencies=[Depends(audit)])

    @api.get("/items")
    def items(count: int) -> str:
        return "ok"

    assert get(api, "/items?count=many", backend) == 422
    assert log == []
    assert "builtins.list.append" in caplog.text


@pytest.mark.parametrize("backend", BACKENDS)
def test_every_bgtasks_guarantee_holds(backend: str, caplog: pytest.LogCaptureFixture) -> None:
    log: list[Any] = []
    api = FastAPI()

    def fails() -> None:
        raise RuntimeError("smtp down")

    def in_thread() -> None:
        log.append(("thread", threading.get_ident() != loop_thread[0], request_id.get()))

    loop_thread: list[int] = []

    @api.get("/")
    async def endpoint(tasks: BackgroundTasks) -> str:
        loop_thread.append(threading.get_ident())
        request_id.set("req-7")
        tasks.add_task(fails)
        tasks.add_task(in_thread)
        request_id.set("changed after add_task")
        return "ok"

    assert get(api, "/", backend) == 200
    assert log == [
        ("thread", True, "req-7")
    ]  # ran despite the failure, in a thread, add-time context
    assert (
        "background task test_fastapi.test_every_bgtasks_guarantee_holds.<locals>.fails failed"
        in caplog.text
    )


@pytest.mark.parametrize("backend", BACKENDS)
def test_tasks_run_even_when_the_endpoint_returns_its_own_background(backend: str) -> None:
    log: list[str] = []
    api = FastAPI()

    async def own() -> None:
        log.append("own background")

    @api.get("/")
    def endpoint(tasks: BackgroundTasks) -> PlainTextResponse:
        tasks.add_task(log.append, "injected")
        return PlainTextResponse("ok", background=bgtasks.BackgroundTask(own))

    assert get(api, "/", backend) == 200
    assert sorted(log) == ["injected", "own background"]  # fastapi#11215 drops "injected"


async def test_with_the_middleware_shutdown_drains_and_names_the_work(
    caplog: pytest.LogCaptureFixture,
) -> None:
    never = anyio.Event()
    api = FastAPI()

    @api.get("/")
    async def endpoint(tasks: BackgroundTasks) -> str:
        tasks.add_task(never.wait)
        return "ok"

    app = BackgroundTasksMiddleware(api, shutdown_timeout=0.05)

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    with anyio.fail_after(10):
        async with Lifespan(app).running() as lifespan, anyio.create_task_group() as group:
            group.start_soon(app, http_scope(), receive, Recorder())
            await anyio.wait_all_tasks_blocked()
            waiting = anyio.Event()

            async def wait_idle() -> None:
                await app.wait_idle()
                waiting.set()

            group.start_soon(wait_idle)
            await anyio.wait_all_tasks_blocked()
            assert not waiting.is_set()  # the middleware counts this work
            assert await lifespan.step("shutdown") == "lifespan.shutdown.complete"
    assert waiting.is_set()
    assert any(
        "cancelled: [anyio" in r.getMessage()
        for r in caplog.records
        if r.levelno == logging.WARNING
    )
