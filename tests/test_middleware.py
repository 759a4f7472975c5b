"""BackgroundTasksMiddleware and get_background_tasks, in process, on asyncio and trio."""

from __future__ import annotations

import logging
from typing import Any

import anyio
import pytest
from helpers import Lifespan, Recorder, http_scope, no_receive

import bgtasks
from bgtasks import (
    BackgroundTask,
    BackgroundTasksMiddleware,
    Response,
    get_background_tasks,
)
from bgtasks.middleware import COMPLETES_RESPONSE

Message = dict[str, Any]


def sending(*messages: Message, log: list[str] | None = None) -> Any:
    """An app that adds one task, then sends ``messages``."""

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        get_background_tasks(scope).add_task(record, log if log is not None else [], "task")
        for message in messages:
            await send(message)

    return app


def record(log: list[str], item: str) -> None:
    log.append(item)


START = {"type": "http.response.start", "status": 200, "headers": []}
START_TRAILERS = {**START, "trailers": True}
BODY = {"type": "http.response.body", "body": b"x"}
CHUNK = {"type": "http.response.body", "body": b"x", "more_body": True}


# 1. When the response is complete


@pytest.mark.parametrize(
    ("messages", "runs"),
    [
        pytest.param([START, BODY], True, id="final body"),
        pytest.param([START, CHUNK, CHUNK, BODY], True, id="streamed, last chunk"),
        pytest.param([START, CHUNK], False, id="streamed, no last chunk"),
        pytest.param(
            [START, {"type": "http.response.pathsend", "path": "/x"}], True, id="pathsend"
        ),
        pytest.param(
            [START, {"type": "http.response.zerocopysend", "file": 3}], True, id="zerocopysend"
        ),
        pytest.param(
            [START, {"type": "http.response.zerocopysend", "file": 3, "more_body": True}],
            False,
            id="zerocopysend, more_body",
        ),
        pytest.param([START_TRAILERS, BODY], False, id="trailers announced, none sent"),
        pytest.param(
            [
                START_TRAILERS,
                BODY,
                {"type": "http.response.trailers", "headers": [], "more_trailers": True},
                {"type": "http.response.trailers", "headers": []},
            ],
            True,
            id="last trailers",
        ),
        pytest.param(
            [START_TRAILERS, BODY, {"type": "http.response.trailers", "more_trailers": True}],
            False,
            id="more trailers pending",
        ),
        pytest.param([START], False, id="start only"),
        pytest.param([], False, id="nothing sent"),
    ],
)
async def test_tasks_run_only_once_the_response_is_complete(
    messages: list[Message], runs: bool, caplog: pytest.LogCaptureFixture
) -> None:
    log: list[str] = []
    send = Recorder()
    await BackgroundTasksMiddleware(sending(*messages, log=log))(http_scope(), no_receive, send)
    assert send.messages == messages
    assert log == (["task"] if runs else [])
    dropped = [r for r in caplog.records if "without completing its response" in r.getMessage()]
    assert len(dropped) == (0 if runs else 1)
    assert runs or "test_middleware.record" in dropped[0].getMessage()


def test_completion_rules_live_in_one_table() -> None:
    assert set(COMPLETES_RESPONSE) == {
        "http.response.body",
        "http.response.zerocopysend",
        "http.response.trailers",
        "http.response.pathsend",
    }


async def test_client_gone_still_counts_as_complete() -> None:
    log: list[str] = []

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        get_background_tasks(scope).add_task(record, log, "task")
        await Response(b"x")(scope, receive, send)  # swallows the OSError, as ASGI 2.4 asks

    await BackgroundTasksMiddleware(app)(http_scope(), no_receive, Recorder(OSError()))
    assert log == ["task"]


# 2. Failed requests


async def test_app_exception_drops_tasks_names_them_and_propagates_unchanged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    log: list[str] = []
    error = LookupError("handler bug")

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        get_background_tasks(scope).add_task(record, log, "task")
        await send(START)
        await send(BODY)
        raise error

    with pytest.raises(LookupError) as caught:
        await BackgroundTasksMiddleware(app)(http_scope(), no_receive, Recorder())
    assert caught.value is error
    assert log == []
    [warning] = [r.getMessage() for r in caplog.records if r.name == "bgtasks"]
    assert "the app raised" in warning and "never started: [test_middleware.record]" in warning


async def test_failing_task_is_logged_and_the_call_returns(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        get_background_tasks(scope).add_task(int, "nope")
        await Response(b"x")(scope, receive, send)

    await BackgroundTasksMiddleware(app)(http_scope(), no_receive, Recorder())
    [error] = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert "builtins.int failed" in error.getMessage()


# 3. Two task lists


async def test_response_background_runs_before_middleware_tasks() -> None:
    log: list[str] = []

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        get_background_tasks(scope).add_task(record, log, "middleware task")
        await Response(b"x", background=BackgroundTask(record, log, "response task"))(
            scope, receive, send
        )

    await BackgroundTasksMiddleware(app)(http_scope(), no_receive, Recorder())
    assert log == ["response task", "middleware task"]


# The accessor


def test_get_background_tasks_outside_the_middleware_says_how_to_fix_it() -> None:
    with pytest.raises(RuntimeError, match=r"wrap the ASGI app with BackgroundTasksMiddleware"):
        get_background_tasks(http_scope())


async def test_tasks_survive_a_copied_scope() -> None:
    log: list[str] = []

    async def inner(scope: dict[str, Any], receive: Any, send: Any) -> None:
        get_background_tasks(scope).add_task(record, log, "from the copy")
        await Response(b"x")(scope, receive, send)

    async def copying(scope: dict[str, Any], receive: Any, send: Any) -> None:
        await inner({**scope, "path": "/rewritten"}, receive, send)

    await BackgroundTasksMiddleware(copying)(http_scope(), no_receive, Recorder())
    assert log == ["from the copy"]


async def test_nested_middleware_runs_tasks_once() -> None:
    log: list[str] = []
    app = BackgroundTasksMiddleware(BackgroundTasksMiddleware(sending(START, BODY, log=log)))
    await app(http_scope(), no_receive, Recorder())
    assert log == ["task"]


async def test_websocket_scope_passes_through() -> None:
    seen: list[str] = []

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        seen.append(scope["type"])
        with pytest.raises(RuntimeError):
            get_background_tasks(scope)

    await BackgroundTasksMiddleware(app)({"type": "websocket"}, no_receive, Recorder())
    assert seen == ["websocket"]


@pytest.mark.parametrize(("timeout", "error"), [(-1, ValueError), ("5", TypeError)])
def test_bad_shutdown_timeout_is_rejected(timeout: Any, error: type[Exception]) -> None:
    with pytest.raises(error, match="shutdown_timeout"):
        BackgroundTasksMiddleware(sending(), shutdown_timeout=timeout)


def test_non_callable_app_is_rejected() -> None:
    with pytest.raises(TypeError, match="needs an ASGI app"):
        BackgroundTasksMiddleware("main:app")  # type: ignore[arg-type]


# 4. and 5. Lifespan, drain and detached mode


def lifespan_app(log: list[str], endpoint: Any = None) -> Any:
    """An app that speaks lifespan, logging its startup and shutdown, and serves ``endpoint``."""

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "lifespan":
            return await endpoint(scope, receive, send)
        while True:
            message = await receive()
            log.append(f"app {message['type']}")
            await send({"type": f"{message['type']}.complete"})
            if message["type"] == "lifespan.shutdown":
                return

    return app


async def test_lifespan_passes_through_to_the_app() -> None:
    log: list[str] = []
    async with Lifespan(BackgroundTasksMiddleware(lifespan_app(log))).running() as lifespan:
        assert await lifespan.step("shutdown") == "lifespan.shutdown.complete"
    assert log == ["app lifespan.startup", "app lifespan.shutdown"]


async def test_app_without_lifespan_support_still_gets_startup_and_shutdown_completed() -> None:
    async def http_only(scope: dict[str, Any], receive: Any, send: Any) -> None:
        assert scope["type"] == "http", "lifespan unsupported"

    async with Lifespan(BackgroundTasksMiddleware(http_only)).running() as lifespan:
        assert await lifespan.step("shutdown") == "lifespan.shutdown.complete"


async def test_app_that_returns_on_lifespan_still_gets_it_completed() -> None:
    async def ignores_lifespan(scope: dict[str, Any], receive: Any, send: Any) -> None:
        return None

    async with Lifespan(BackgroundTasksMiddleware(ignores_lifespan)).running() as lifespan:
        assert await lifespan.step("shutdown") == "lifespan.shutdown.complete"


async def test_startup_failure_of_a_lifespan_app_propagates() -> None:
    async def broken(scope: dict[str, Any], receive: Any, send: Any) -> None:
        await receive()
        raise ConnectionError("database unreachable")

    lifespan = Lifespan(BackgroundTasksMiddleware(broken))
    await lifespan.to_app.send({"type": "lifespan.startup"})
    with pytest.raises(ConnectionError, match="database unreachable"):
        await lifespan.app({"type": "lifespan"}, lifespan.receive, lifespan.send)


def waiting_endpoint(release: anyio.Event, log: list[str]) -> Any:
    async def wait_then_record() -> None:
        await release.wait()
        log.append("task done")

    async def endpoint(scope: dict[str, Any], receive: Any, send: Any) -> None:
        get_background_tasks(scope).add_task(wait_then_record)
        await Response(b"ok")(scope, receive, send)

    return endpoint


async def test_detached_call_returns_before_its_tasks_finish() -> None:
    log: list[str] = []
    release = anyio.Event()
    app = BackgroundTasksMiddleware(
        lifespan_app(log, waiting_endpoint(release, log)), detached=True
    )
    async with Lifespan(app).running() as lifespan:
        send = Recorder()
        with anyio.fail_after(10):
            await app(http_scope(), no_receive, send)  # would hang if it awaited the task
        assert send.body == b"ok"
        assert log == ["app lifespan.startup"]
        release.set()
        assert await lifespan.step("shutdown") == "lifespan.shutdown.complete"
    assert log == ["app lifespan.startup", "task done", "app lifespan.shutdown"]


@pytest.mark.parametrize("detached", [False, True])
async def test_shutdown_waits_for_in_flight_work_before_the_apps_shutdown(detached: bool) -> None:
    log: list[str] = []
    release = anyio.Event()
    app = BackgroundTasksMiddleware(
        lifespan_app(log, waiting_endpoint(release, log)), detached=detached
    )
    async with Lifespan(app).running() as lifespan, anyio.create_task_group() as requests:
        requests.start_soon(app, http_scope(), no_receive, Recorder())
        await anyio.wait_all_tasks_blocked()

        async def shut_down() -> None:
            assert await lifespan.step("shutdown") == "lifespan.shutdown.complete"

        requests.start_soon(shut_down)
        await anyio.wait_all_tasks_blocked()
        assert log == ["app lifespan.startup"]  # shutdown is held back by the running task
        release.set()
    assert log == ["app lifespan.startup", "task done", "app lifespan.shutdown"]


@pytest.fixture
def no_shutdown_limit() -> Any:
    yield
    bgtasks.limit_shutdown(None)  # the limit is process-wide: later tests must not inherit it


@pytest.mark.parametrize("detached", [False, True])
async def test_limit_shutdown_cuts_a_longer_shutdown_timeout_short_and_names_the_task(
    detached: bool, caplog: pytest.LogCaptureFixture, no_shutdown_limit: None
) -> None:
    log: list[str] = []
    never = anyio.Event()

    async def endpoint(scope: dict[str, Any], receive: Any, send: Any) -> None:
        get_background_tasks(scope).add_task(never.wait)
        await Response(b"ok")(scope, receive, send)

    app = BackgroundTasksMiddleware(
        lifespan_app(log, endpoint), detached=detached, shutdown_timeout=3600
    )
    async with Lifespan(app).running() as lifespan, anyio.create_task_group() as requests:
        requests.start_soon(app, http_scope(), no_receive, Recorder())
        await anyio.wait_all_tasks_blocked()
        bgtasks.limit_shutdown(0.05)
        with anyio.fail_after(10):  # an hour's shutdown_timeout would hang the test
            assert await lifespan.step("shutdown") == "lifespan.shutdown.complete"
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("the server's shutdown deadline ran out" in w for w in warnings)
    assert any("cancelled: [anyio" in w for w in warnings)


@pytest.mark.parametrize(
    ("seconds", "error"), [(-1, ValueError), (float("nan"), ValueError), ("5", TypeError)]
)
def test_limit_shutdown_refuses_what_is_not_a_time(seconds: Any, error: type[Exception]) -> None:
    with pytest.raises(error, match="seconds"):
        bgtasks.limit_shutdown(seconds)


@pytest.mark.parametrize("detached", [False, True])
async def test_shutdown_timeout_cancels_and_names_every_unfinished_task(
    detached: bool, caplog: pytest.LogCaptureFixture
) -> None:
    log: list[str] = []
    never = anyio.Event()

    async def endpoint(scope: dict[str, Any], receive: Any, send: Any) -> None:
        tasks = get_background_tasks(scope)
        tasks.add_task(never.wait)
        tasks.add_task(record, log, "second")
        await Response(b"ok")(scope, receive, send)

    app = BackgroundTasksMiddleware(
        lifespan_app(log, endpoint), detached=detached, shutdown_timeout=0.05
    )
    async with Lifespan(app).running() as lifespan, anyio.create_task_group() as requests:
        requests.start_soon(app, http_scope(), no_receive, Recorder())
        await anyio.wait_all_tasks_blocked()
        with anyio.fail_after(10):
            assert await lifespan.step("shutdown") == "lifespan.shutdown.complete"
    assert log == ["app lifespan.startup", "app lifespan.shutdown"]
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("shutdown_timeout (0.05s) ran out" in w for w in warnings)
    assert any(
        "cancelled: [anyio" in w and "never started: [test_middleware.record]" in w
        for w in warnings
    )


async def test_detached_without_lifespan_fails_the_request_loudly() -> None:
    log: list[str] = []
    app = BackgroundTasksMiddleware(sending(START, BODY, log=log), detached=True)
    send = Recorder()
    with pytest.raises(RuntimeError, match="needs the ASGI lifespan protocol"):
        await app(http_scope(), no_receive, send)
    assert send.messages == []
    assert log == []


async def test_cancelled_request_gives_its_work_a_grace_period_then_propagates() -> None:
    log: list[str] = []
    release = anyio.Event()
    app = BackgroundTasksMiddleware(waiting_endpoint(release, log), shutdown_timeout=10)
    request = anyio.CancelScope()

    async def serve_request() -> None:
        with request:
            await app(http_scope(), no_receive, Recorder())

    async with anyio.create_task_group() as group:
        group.start_soon(serve_request)
        await anyio.wait_all_tasks_blocked()
        request.cancel()  # what hypercorn and daphne do at shutdown
        await anyio.wait_all_tasks_blocked()
        assert log == []
        release.set()
    assert log == ["task done"]
    assert request.cancelled_caught  # the cancellation still reached the caller


async def test_grace_period_ends_by_cancelling_and_naming_the_work(
    caplog: pytest.LogCaptureFixture,
) -> None:
    never = anyio.Event()

    async def endpoint(scope: dict[str, Any], receive: Any, send: Any) -> None:
        get_background_tasks(scope).add_task(never.wait)
        await Response(b"ok")(scope, receive, send)

    app = BackgroundTasksMiddleware(endpoint, shutdown_timeout=0.05)
    with anyio.fail_after(10), anyio.CancelScope() as request:
        async with anyio.create_task_group() as group:
            group.start_soon(app, http_scope(), no_receive, Recorder())
            await anyio.wait_all_tasks_blocked()
            request.cancel()
    assert request.cancelled_caught
    assert "cancelled: [anyio" in caplog.text


# The engine: back-pressure, threads that follow the load


@pytest.mark.parametrize("detached", [False, True])
async def test_backlog_is_bounded_by_holding_the_end_of_the_next_response(detached: bool) -> None:
    log: list[str] = []
    release = anyio.Event()
    app = BackgroundTasksMiddleware(
        lifespan_app(log, waiting_endpoint(release, log)), detached=detached, max_pending=2
    )
    sends = [Recorder() for _ in range(3)]
    async with Lifespan(app).running() as lifespan:
        with anyio.fail_after(10):
            async with anyio.create_task_group() as group:
                for send in sends:
                    group.start_soon(app, http_scope(), no_receive, send)
                    await anyio.wait_all_tasks_blocked()
                # Two requests' work is pending: the third response is held before its final
                # body (servers read the next request as soon as a response is complete).
                assert [send.body for send in sends] == [b"ok", b"ok", b""]
                release.set()
            assert [send.body for send in sends] == [b"ok", b"ok", b"ok"]
            await app.wait_idle()
        assert log.count("task done") == 3
        assert await lifespan.step("shutdown") == "lifespan.shutdown.complete"


@pytest.mark.parametrize(
    ("name", "value", "error"),
    [
        ("max_pending", 0, ValueError),
        ("max_pending", 1.5, TypeError),
        ("detached", "false", TypeError),
    ],
)
def test_bad_engine_settings_are_rejected(name: str, value: Any, error: type[Exception]) -> None:
    with pytest.raises(error, match=name):
        BackgroundTasksMiddleware(sending(START, BODY), **{name: value})


@pytest.mark.parametrize("seconds", [0.005, 0.03])
@pytest.mark.parametrize("detached", [False, True])
async def test_queued_sync_work_gets_more_threads_while_it_waits(
    detached: bool, seconds: float
) -> None:
    # Tasks of 5 or 30 ms: under the old rule (a batch must run 50 ms before another worker
    # starts) all of them shared one thread, as they did when the rule watched for the same
    # batch at the head of the queue (one busy worker keeps moving the head). Now work that
    # has waited brings more workers.
    import threading
    import time

    threads: set[int] = set()

    def short_io() -> None:
        threads.add(threading.get_ident())
        time.sleep(seconds)

    async def endpoint(scope: dict[str, Any], receive: Any, send: Any) -> None:
        get_background_tasks(scope).add_task(short_io)
        await Response(b"ok")(scope, receive, send)

    app = BackgroundTasksMiddleware(lifespan_app([], endpoint), detached=detached)
    async with Lifespan(app).running() as lifespan:
        with anyio.fail_after(20):
            async with anyio.create_task_group() as group:
                for _ in range(round(0.9 / seconds)):
                    group.start_soon(app, http_scope(), no_receive, Recorder())
            await app.wait_idle()
        assert await lifespan.step("shutdown") == "lifespan.shutdown.complete"
    assert len(threads) > 1


async def test_wait_idle_returns_once_detached_work_is_done() -> None:
    log: list[str] = []
    release = anyio.Event()
    app = BackgroundTasksMiddleware(
        lifespan_app(log, waiting_endpoint(release, log)), detached=True
    )
    async with Lifespan(app).running() as lifespan:
        await app(http_scope(), no_receive, Recorder())
        async with anyio.create_task_group() as group:
            group.start_soon(app.wait_idle)
            await anyio.wait_all_tasks_blocked()
            assert log == ["app lifespan.startup"]
            release.set()
        assert log == ["app lifespan.startup", "task done"]
        assert await lifespan.step("shutdown") == "lifespan.shutdown.complete"


# Nothing escapes, nothing vanishes


class Custom(BaseException):
    pass


async def raises_custom() -> None:
    raise Custom("escaped?")


async def test_base_exception_in_detached_work_spares_other_requests_and_the_lifespan(
    caplog: pytest.LogCaptureFixture,
) -> None:
    log: list[str] = []
    release = anyio.Event()

    async def endpoint(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["path"] == "/bad":
            get_background_tasks(scope).add_task(raises_custom)
        else:
            get_background_tasks(scope).add_task(waiting_then, release, log)
        await Response(b"ok")(scope, receive, send)

    app = BackgroundTasksMiddleware(lifespan_app(log, endpoint), detached=True)
    async with Lifespan(app).running() as lifespan:
        await app(http_scope(path="/slow"), no_receive, Recorder())
        await app(http_scope(path="/bad"), no_receive, Recorder())
        await anyio.wait_all_tasks_blocked()
        release.set()
        await app.wait_idle()
        assert await lifespan.step("shutdown") == "lifespan.shutdown.complete"
    assert log == ["app lifespan.startup", "slow task done", "app lifespan.shutdown"]
    assert "test_middleware.raises_custom failed" in caplog.text


async def waiting_then(release: anyio.Event, log: list[str]) -> None:
    await release.wait()
    log.append("slow task done")


async def test_detached_request_completing_after_lifespan_ended_still_runs_its_tasks() -> None:
    log: list[str] = []
    respond = anyio.Event()

    async def endpoint(scope: dict[str, Any], receive: Any, send: Any) -> None:
        get_background_tasks(scope).add_task(record, log, "late task")
        await respond.wait()  # the request began before shutdown and ends after it
        await Response(b"ok")(scope, receive, send)

    app = BackgroundTasksMiddleware(lifespan_app(log, endpoint), detached=True)
    with anyio.fail_after(10):
        async with anyio.create_task_group() as requests:
            async with Lifespan(app).running() as lifespan:
                requests.start_soon(app, http_scope(), no_receive, Recorder())
                await anyio.wait_all_tasks_blocked()
                assert await lifespan.step("shutdown") == "lifespan.shutdown.complete"
            respond.set()
    assert log[-1] == "late task"


async def test_add_task_after_the_requests_tasks_ran_raises() -> None:
    seen: list[Any] = []

    async def endpoint(scope: dict[str, Any], receive: Any, send: Any) -> None:
        seen.append(get_background_tasks(scope))
        await Response(b"ok")(scope, receive, send)

    app = BackgroundTasksMiddleware(endpoint)
    await app(http_scope(), no_receive, Recorder())
    with pytest.raises(RuntimeError, match="already run"):
        seen[0].add_task(record, [], "late")


async def test_cancellation_after_a_complete_response_gives_the_work_its_grace_period() -> None:
    log: list[str] = []
    request = anyio.CancelScope()
    app_holds = anyio.Event()

    async def endpoint(scope: dict[str, Any], receive: Any, send: Any) -> None:
        get_background_tasks(scope).add_task(record, log, "task")
        await Response(b"ok")(scope, receive, send)
        app_holds.set()
        await anyio.sleep_forever()  # still running when the server gives up on it

    app = BackgroundTasksMiddleware(endpoint, shutdown_timeout=10)

    async def serve_request() -> None:
        with request:
            await app(http_scope(), no_receive, Recorder())

    with anyio.fail_after(10):
        async with anyio.create_task_group() as group:
            group.start_soon(serve_request)
            await app_holds.wait()
            request.cancel()
    assert request.cancelled_caught
    assert log == ["task"]


async def test_oserror_from_send_propagated_by_the_app_still_runs_the_tasks() -> None:
    log: list[str] = []
    app = BackgroundTasksMiddleware(sending(START, BODY, log=log))
    with pytest.raises(OSError):
        await app(http_scope(), no_receive, Recorder(error=OSError("client gone")))
    assert log == ["task"]


def test_get_background_tasks_in_a_websocket_scope_says_there_are_none() -> None:
    with pytest.raises(RuntimeError, match="'websocket' scope, which has none"):
        get_background_tasks({"type": "websocket"})


async def test_lifespan_error_before_the_first_receive_is_logged_with_its_traceback(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def raw(scope: dict[str, Any], receive: Any, send: Any) -> None:
        raise ValueError("startup went wrong")

    app = BackgroundTasksMiddleware(raw)
    async with Lifespan(app).running() as lifespan:
        assert await lifespan.step("shutdown") == "lifespan.shutdown.complete"
    [warning] = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert warning.exc_info is not None and "startup went wrong" in str(warning.exc_info[1])


# run_if: error responses are failed requests


@pytest.mark.parametrize(
    ("status", "run_if", "runs"),
    [
        (200, None, True),
        (399, None, True),
        (400, None, False),
        (503, None, False),
        (404, lambda status: status != 500, True),
        (500, lambda status: status != 500, False),
    ],
)
async def test_run_if_decides_from_the_status_which_requests_run_their_tasks(
    status: int, run_if: Any, runs: bool, caplog: pytest.LogCaptureFixture
) -> None:
    log: list[str] = []
    start = {**START, "status": status}
    options = {} if run_if is None else {"run_if": run_if}
    app = BackgroundTasksMiddleware(sending(start, BODY, log=log), **options)
    await app(http_scope(), no_receive, Recorder())
    assert log == (["task"] if runs else [])
    assert (f"status {status} fails run_if" in caplog.text) is not runs


def test_run_if_must_be_callable() -> None:
    with pytest.raises(TypeError, match="run_if"):
        BackgroundTasksMiddleware(sending(START, BODY), run_if=400)  # type: ignore[arg-type]


# get_background_tasks() with no argument


async def test_no_argument_finds_the_request_from_async_code_threads_and_spawned_tasks() -> None:
    found: dict[str, Any] = {}

    def deep_in_a_service() -> None:  # code that has no request at hand
        found.setdefault("service", get_background_tasks())

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        found["scope"] = get_background_tasks(scope)
        deep_in_a_service()
        await anyio.to_thread.run_sync(lambda: found.setdefault("thread", get_background_tasks()))
        async with anyio.create_task_group() as group:
            group.start_soon(
                lambda: anyio.to_thread.run_sync(
                    lambda: found.setdefault("spawned", get_background_tasks())
                )
            )
        get_background_tasks().add_task(record, found.setdefault("log", []), "added")
        await send(START)
        await send(BODY)

    await BackgroundTasksMiddleware(app)(http_scope(), no_receive, Recorder())
    assert found["service"] is found["scope"]
    assert found["thread"] is found["scope"]
    assert found["spawned"] is found["scope"]
    assert found["log"] == ["added"]


async def test_no_argument_sees_each_concurrent_request_s_own_list() -> None:
    seen: list[tuple[str, Any, Any]] = []
    both_in = anyio.Event()
    arrived = 0

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        nonlocal arrived
        arrived += 1
        if arrived == 2:
            both_in.set()
        await both_in.wait()  # both requests are in flight before either looks
        seen.append((scope["path"], get_background_tasks(), get_background_tasks(scope)))
        await send(START)
        await send(BODY)

    middleware = BackgroundTasksMiddleware(app)
    async with anyio.create_task_group() as group:
        group.start_soon(middleware, http_scope(path="/a"), no_receive, Recorder())
        group.start_soon(middleware, http_scope(path="/b"), no_receive, Recorder())
    assert sorted(path for path, _, _ in seen) == ["/a", "/b"]
    assert all(current is own for _, current, own in seen)


async def test_no_argument_outside_a_request_raises_saying_where_it_works() -> None:
    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        await send(START)
        await send(BODY)

    with pytest.raises(RuntimeError, match="only while an HTTP request is handled"):
        get_background_tasks()
    await BackgroundTasksMiddleware(app)(http_scope(), no_receive, Recorder())
    with pytest.raises(RuntimeError, match="only while an HTTP request is handled"):
        get_background_tasks()  # the request is over: its list is not left behind
