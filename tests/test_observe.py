"""The observer hook: every task on every path is reported added, started and finished (or
dropped), in its own context and thread; a raising observer never breaks anything."""

from __future__ import annotations

import contextvars
import logging
import threading
from collections.abc import Iterator
from typing import Any

import anyio
import pytest
from helpers import Lifespan, Recorder, http_scope, no_receive

import bgtasks
from bgtasks import (
    BackgroundTask,
    BackgroundTasks,
    BackgroundTasksMiddleware,
    Response,
    get_background_tasks,
)
from bgtasks.testing import RecordingDispatcher

request_id: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="-")


class Seen(bgtasks.Observer):
    def __init__(self) -> None:
        self.events: list[tuple[Any, ...]] = []
        self.lock = threading.Lock()

    def note(self, *event: Any) -> None:
        with self.lock:
            self.events.append(event)

    def added(self, task: Any) -> None:
        self.note("added", task.name)

    def started(self, task: Any) -> None:
        self.note("started", task.name, request_id.get(), threading.get_ident())

    def finished(self, task: Any, error: BaseException | None, cancelled: bool) -> None:
        self.note("finished", task.name, type(error).__name__ if error else None, cancelled)

    def dropped(self, task: Any, reason: str) -> None:
        self.note("dropped", task.name, reason)

    def waited(self, seconds: float) -> None:
        self.note("waited", seconds > 0)

    def kinds(self, name: str) -> list[str]:
        return [e[0] for e in self.events if len(e) > 1 and e[1] == name]


@pytest.fixture
def seen() -> Iterator[Seen]:
    observer = Seen()
    bgtasks.add_observer(observer)
    try:
        yield observer
    finally:
        bgtasks.remove_observer(observer)


async def quick() -> None:
    return None


def quick_sync() -> None:
    return None


def fails() -> None:
    raise ValueError("no")


Q, QS, F = "test_observe.quick", "test_observe.quick_sync", "test_observe.fails"


async def test_direct_run_reports_each_task_in_its_context_and_thread(
    seen: Seen, loop_thread: int
) -> None:
    request_id.set("req-1")
    tasks = BackgroundTasks()
    tasks.add_task(quick)
    tasks.add_task(quick_sync)
    tasks.add_task(fails)
    request_id.set("changed later")
    with pytest.raises(ValueError):
        await tasks()
    assert seen.kinds(Q) == ["added", "started", "finished"]
    assert seen.kinds(QS) == ["added", "started", "finished"]
    started = {e[1]: e for e in seen.events if e[0] == "started"}
    assert started[Q][2] == started[QS][2] == "req-1"  # the context of add time
    assert started[Q][3] == loop_thread != started[QS][3]  # async on the loop, sync in a thread
    assert ("finished", F, "ValueError", False) in seen.events


@pytest.mark.parametrize("detached", [False, True])
async def test_middleware_reports_both_modes(seen: Seen, detached: bool) -> None:
    async def endpoint(scope: dict[str, Any], receive: Any, send: Any) -> None:
        get_background_tasks(scope).add_task(quick)
        get_background_tasks(scope).add_task(quick_sync)
        await Response(b"ok")(scope, receive, send)

    app = BackgroundTasksMiddleware(endpoint, detached=detached)
    async with Lifespan(app).running() as lifespan:
        await app(http_scope(), no_receive, Recorder())
        await app.wait_idle()
        assert await lifespan.step("shutdown") == "lifespan.shutdown.complete"
    assert seen.kinds(Q) == seen.kinds(QS) == ["added", "started", "finished"]


async def test_response_background_is_reported(seen: Seen) -> None:
    tasks = BackgroundTasks()
    tasks.add_task(quick)
    await Response(b"ok", background=tasks)(http_scope(), no_receive, Recorder())
    assert seen.kinds(Q) == ["added", "started", "finished"]


async def test_cancelled_task_finishes_cancelled_and_the_rest_are_dropped(seen: Seen) -> None:
    async def hangs() -> None:
        await anyio.sleep_forever()

    tasks = BackgroundTasks()
    tasks.add_task(hangs)
    tasks.add_task(quick)
    with anyio.move_on_after(0.05):
        await tasks()
    [finished] = [e for e in seen.events if e[0] == "finished"]
    assert finished[3] is True and finished[1].endswith("hangs")
    assert seen.kinds(Q) == ["added", "dropped"]


async def test_failed_request_reports_its_tasks_and_calls_dropped(seen: Seen) -> None:
    async def endpoint(scope: dict[str, Any], receive: Any, send: Any) -> None:
        tasks = get_background_tasks(scope)
        tasks.add_task(quick)
        tasks.enqueue(quick_sync)
        await send({"type": "http.response.start", "status": 500, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    dispatcher = RecordingDispatcher()
    app = BackgroundTasksMiddleware(endpoint, dispatcher=dispatcher)
    await app(http_scope(), no_receive, Recorder())
    assert seen.kinds(Q) == ["added", "dropped"]
    assert seen.kinds(QS) == ["added", "dropped"]
    assert dispatcher.calls == []


async def test_enqueued_calls_start_when_sent_and_finish_when_acknowledged(seen: Seen) -> None:
    dispatcher = RecordingDispatcher()
    tasks = BackgroundTasks(dispatcher=dispatcher)
    tasks.enqueue(quick_sync)
    await tasks()
    assert seen.kinds(QS) == ["added", "started", "finished"]
    dispatcher.refuse = ConnectionError("down")
    again = BackgroundTasks(dispatcher=dispatcher)
    again.enqueue(quick_sync)
    with pytest.raises(RuntimeError):
        await again()
    assert ("finished", QS, "ConnectionError", False) in seen.events


async def test_waiting_for_room_is_reported(seen: Seen) -> None:
    release = anyio.Event()

    async def waits() -> None:
        await release.wait()

    async def endpoint(scope: dict[str, Any], receive: Any, send: Any) -> None:
        get_background_tasks(scope).add_task(waits)
        await Response(b"ok")(scope, receive, send)

    app = BackgroundTasksMiddleware(endpoint, detached=True, max_pending=1)
    async with Lifespan(app).running() as lifespan:
        async with anyio.create_task_group() as group:
            for _ in range(2):
                group.start_soon(app, http_scope(), no_receive, Recorder())
                await anyio.wait_all_tasks_blocked()
            release.set()
        await app.wait_idle()
        assert await lifespan.step("shutdown") == "lifespan.shutdown.complete"
    assert ("waited", True) in seen.events


class Broken(bgtasks.Observer):
    def started(self, task: Any) -> None:
        raise RuntimeError("observer bug")


async def test_raising_observer_is_logged_once_and_breaks_nothing(
    caplog: pytest.LogCaptureFixture,
) -> None:
    broken = Broken()
    bgtasks.add_observer(broken)
    try:
        log: list[str] = []
        for _ in range(2):
            tasks = BackgroundTasks()
            tasks.add_task(log.append, "ran")
            tasks.add_task(quick)
            await tasks()
    finally:
        bgtasks.remove_observer(broken)
    assert log == ["ran", "ran"]
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1 and "observer" in errors[0].getMessage()


async def test_an_observer_added_again_after_removal_has_its_first_error_logged_again(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # The same object, so the same id(): as a new observer at a collected one's address.
    broken = Broken()
    for _ in range(2):
        bgtasks.add_observer(broken)
        try:
            await BackgroundTask(quick)()
        finally:
            bgtasks.remove_observer(broken)
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 2


def test_observer_must_be_an_observer() -> None:
    with pytest.raises(TypeError, match="Observer subclass"):
        bgtasks.add_observer(object())  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="not an observer"):
        bgtasks.remove_observer(bgtasks.Observer())
