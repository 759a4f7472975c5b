"""LocalDispatcher: an app written with enqueue runs with no broker, in process, after the
response; its work is counted by wait_idle and drained at shutdown. On asyncio and trio."""

from __future__ import annotations

import threading
from typing import Any

import anyio
import pytest
from helpers import Lifespan, Recorder, answer_lifespan, http_scope, no_receive

from bgtasks import (
    BackgroundTasks,
    BackgroundTasksMiddleware,
    LocalDispatcher,
    Response,
    get_background_tasks,
)

done: list[tuple[str, bool]] = []
release = threading.Event()


def send_welcome(to: str) -> None:
    """Stands for an engine task: a plain callable, as Celery and Procrastinate tasks are."""
    done.append((to, threading.current_thread() is not threading.main_thread()))


def waits(to: str) -> None:
    release.wait(10)
    done.append((to, True))


@pytest.fixture(autouse=True)
def fresh() -> None:
    done.clear()
    release.clear()


def enqueuing(func: Any, status: int = 200) -> Any:
    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            return await answer_lifespan(receive, send)
        get_background_tasks(scope).enqueue(func, "ada")
        await Response(b"ok", status_code=status)(scope, receive, send)

    return app


@pytest.mark.parametrize("detached", [False, True])
async def test_enqueued_call_runs_in_process_after_the_response(detached: bool) -> None:
    app = BackgroundTasksMiddleware(
        enqueuing(send_welcome), dispatcher=LocalDispatcher(), detached=detached
    )
    async with Lifespan(app).running() as lifespan:
        client = Recorder()
        await app(http_scope(), no_receive, client)
        assert client.messages[0]["status"] == 200
        with anyio.fail_after(10):
            await app.wait_idle()
        assert done == [("ada", True)]  # a sync engine task runs in a worker thread
        assert await lifespan.step("shutdown") == "lifespan.shutdown.complete"


async def test_failed_request_runs_nothing() -> None:
    dispatcher = LocalDispatcher()
    app = BackgroundTasksMiddleware(enqueuing(send_welcome, status=500), dispatcher=dispatcher)
    await app(http_scope(), no_receive, Recorder())
    await app.wait_idle()
    assert done == []


async def test_wait_idle_waits_for_the_work_and_shutdown_drains_it() -> None:
    dispatcher = LocalDispatcher()
    app = BackgroundTasksMiddleware(enqueuing(waits), dispatcher=dispatcher)
    async with Lifespan(app).running() as lifespan:
        await app(http_scope(), no_receive, Recorder())
        async with anyio.create_task_group() as group:

            async def shut_down() -> None:
                assert await lifespan.step("shutdown") == "lifespan.shutdown.complete"

            group.start_soon(shut_down)
            await anyio.wait_all_tasks_blocked()
            assert done == []  # shutdown waits for the enqueued work
            await anyio.to_thread.run_sync(release.set)
    assert done == [("ada", True)]


async def test_direct_use_runs_the_call() -> None:
    dispatcher = LocalDispatcher()
    tasks = BackgroundTasks(dispatcher=dispatcher)
    tasks.enqueue(send_welcome, "bob")
    await tasks()
    with anyio.fail_after(10):
        await dispatcher.wait_idle()
    assert done == [("bob", True)]
