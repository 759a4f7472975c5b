"""enqueue and the Dispatcher protocol: calls are sent only for requests that succeed, before
the client is told, batched across requests, and a refusing broker turns into a 503. In
process, on asyncio and trio, with bgtasks.testing.RecordingDispatcher."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import anyio
import pytest
from helpers import Recorder, http_scope, no_receive

from bgtasks import BackgroundTasks, BackgroundTasksMiddleware, get_background_tasks
from bgtasks.dispatch import Call
from bgtasks.testing import RecordingDispatcher

START = {"type": "http.response.start", "status": 200, "headers": []}
BODY = {"type": "http.response.body", "body": b"ok"}


def send_welcome(email: str, *, template: str = "welcome") -> None:
    """Stands for an engine task; the recording dispatcher never runs it."""


def charge(order: int) -> None:
    """Stands for an engine task."""


def enqueuing(status: int = 200, raises: BaseException | None = None) -> Any:
    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        tasks = get_background_tasks(scope)
        tasks.enqueue(send_welcome, "ada@example.com", template="hello")
        tasks.enqueue(charge, 7)
        await send({**START, "status": status})
        if raises is not None:
            raise raises
        await send(BODY)

    return app


def test_enqueue_without_a_dispatcher_says_how_to_configure_one() -> None:
    with pytest.raises(RuntimeError, match=r"dispatcher=.*CeleryDispatcher.*add_task"):
        BackgroundTasks().enqueue(send_welcome, "x")


def test_dispatcher_that_is_not_one_is_rejected() -> None:
    with pytest.raises(TypeError, match="dispatcher must implement"):
        BackgroundTasks(dispatcher=object())  # type: ignore[arg-type]


async def test_calls_of_a_success_are_sent_in_order_before_the_client_is_told() -> None:
    client = Recorder()
    seen_by_client_at_send: list[int] = []

    class Noting(RecordingDispatcher):
        def send(self, calls: Sequence[Call]) -> list[BaseException | None]:
            seen_by_client_at_send.append(len(client.messages))
            return super().send(calls)

    dispatcher = Noting()
    app = BackgroundTasksMiddleware(enqueuing(), dispatcher=dispatcher)
    await app(http_scope(), no_receive, client)
    assert dispatcher.calls == [
        ("test_dispatch.send_welcome", ("ada@example.com",), {"template": "hello"}),
        ("test_dispatch.charge", (7,), {}),
    ]
    assert seen_by_client_at_send == [0]  # nothing had gone out when the broker got them
    assert client.types == ["http.response.start", "http.response.body"]
    assert client.messages[0]["status"] == 200


@pytest.mark.parametrize(
    ("status", "raises"), [(400, None), (500, None), (200, RuntimeError("handler failed"))]
)
async def test_failed_request_sends_nothing_and_names_the_calls(
    status: int, raises: BaseException | None, caplog: pytest.LogCaptureFixture
) -> None:
    dispatcher = RecordingDispatcher()
    app = BackgroundTasksMiddleware(enqueuing(status, raises), dispatcher=dispatcher)
    if raises is None:
        await app(http_scope(), no_receive, Recorder())
    else:
        with pytest.raises(RuntimeError):
            await app(http_scope(), no_receive, Recorder())
    assert dispatcher.calls == []
    assert "test_dispatch.send_welcome, test_dispatch.charge" in caplog.text


async def test_refusing_broker_turns_the_success_into_a_503_naming_the_calls(
    caplog: pytest.LogCaptureFixture,
) -> None:
    dispatcher = RecordingDispatcher()
    dispatcher.refuse = ConnectionError("redis is down")
    client = Recorder()
    app = BackgroundTasksMiddleware(enqueuing(), dispatcher=dispatcher)
    await app(http_scope(), no_receive, client)
    assert client.messages[0]["status"] == 503
    assert client.types == ["http.response.start", "http.response.body"]
    [error] = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert "client gets 503" in error.getMessage()
    assert "test_dispatch.send_welcome, test_dispatch.charge" in error.getMessage()


async def test_calls_of_requests_completing_together_go_out_in_one_batch() -> None:
    dispatcher = RecordingDispatcher()
    app = BackgroundTasksMiddleware(enqueuing(), dispatcher=dispatcher)
    async with anyio.create_task_group() as group:
        for _ in range(3):
            group.start_soon(app, http_scope(), no_receive, Recorder())
    assert dispatcher.batches == [6]
    assert len(dispatcher.calls) == 6


async def test_streamed_response_is_held_until_its_calls_are_sent() -> None:
    client = Recorder()
    at_send: list[list[str]] = []

    class Noting(RecordingDispatcher):
        def send(self, calls: Sequence[Call]) -> list[BaseException | None]:
            at_send.append(list(client.types))
            return super().send(calls)

    async def streaming(scope: dict[str, Any], receive: Any, send: Any) -> None:
        get_background_tasks(scope).enqueue(charge, 1)
        await send(START)
        await send({"type": "http.response.body", "body": b"a", "more_body": True})
        await send({"type": "http.response.body", "body": b"b"})

    dispatcher = Noting()
    await BackgroundTasksMiddleware(streaming, dispatcher=dispatcher)(
        http_scope(), no_receive, client
    )
    assert at_send == [[]]
    assert client.body == b"ab"


async def test_direct_use_sends_enqueued_calls_and_raises_when_refused() -> None:
    dispatcher = RecordingDispatcher()
    tasks = BackgroundTasks(dispatcher=dispatcher)
    tasks.enqueue(charge, 1)
    await tasks()
    assert dispatcher.calls == [("test_dispatch.charge", (1,), {})]
    dispatcher.refuse = ConnectionError("down")
    again = BackgroundTasks(dispatcher=dispatcher)
    again.enqueue(charge, 2)
    refused = r"refused 1 of 1 enqueued calls: \[test_dispatch.charge\]"
    with pytest.raises(RuntimeError, match=refused):
        await again()


def test_procrastinate_refuses_positional_arguments_at_enqueue() -> None:
    import procrastinate

    from bgtasks.procrastinate import ProcrastinateDispatcher

    app = procrastinate.App(connector=procrastinate.SyncPsycopgConnector(conninfo="postgresql://"))

    @app.task(name="tests.welcome")
    def welcome(to: str) -> None:
        """Never runs: nothing is sent."""

    tasks = BackgroundTasks(dispatcher=ProcrastinateDispatcher(app))
    with pytest.raises(TypeError, match="keyword arguments only"):
        tasks.enqueue(welcome, "ada")
    assert tasks.enqueue(welcome, to="ada").name == "tests.welcome"
    with pytest.raises(TypeError, match="Procrastinate task"):
        tasks.enqueue(send_welcome, to="ada")
