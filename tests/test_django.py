"""bgtasks.django.BackgroundTasksBackend: Django's own task API, run after the response.

Real Django, through the wrapped ASGI application (httpx's ASGITransport, since Django's own
AsyncClient bypasses ASGI wrappers) and under uvicorn. Django runs on asyncio only. The backport
(django_tasks) is used where Django is older than 6; Django 6's own django.tasks where it is
installed (Python 3.12 and later).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import framework_apps
import httpx
import pytest

import bgtasks.django
from bgtasks import BackgroundTasksMiddleware

framework_apps.configure_django()

import django  # noqa: E402
from django_task_app import EVENTS, RESULTS, fails, record_async, record_sync  # noqa: E402

try:  # Django 6
    from django.tasks import TaskResultStatus, signals, task
    from django.tasks.exceptions import InvalidTask as InvalidTaskError
except ImportError:
    from django_tasks import TaskResultStatus, signals, task  # type: ignore[no-redef]
    from django_tasks.exceptions import InvalidTaskError  # type: ignore[no-redef]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"  # Django's ASGI handler runs on asyncio only


@pytest.fixture(autouse=True)
def clean() -> Iterator[None]:
    EVENTS.clear()
    RESULTS.clear()
    yield
    EVENTS.clear()
    RESULTS.clear()


@pytest.fixture
def signalled() -> Iterator[list[tuple[str, str]]]:
    """Django's task signals as they arrive: (signal, the result's status then)."""
    seen: list[tuple[str, str]] = []
    receivers = {}
    for name in ("task_enqueued", "task_started", "task_finished"):

        def receiver(sender: Any, task_result: Any, name: str = name, **_: Any) -> None:
            seen.append((name, str(task_result.status)))

        receivers[name] = receiver
        getattr(signals, name).connect(receiver)
    yield seen
    for name, receiver in receivers.items():
        getattr(signals, name).disconnect(receiver)


class Sent:
    """Notes, in EVENTS, when the response's final body has gone out."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        async def noting(message: Any) -> None:
            await send(message)
            if message["type"] == "http.response.body" and not message.get("more_body"):
                EVENTS.append(("response sent",))

        await self.app(scope, receive, noting)


def application() -> BackgroundTasksMiddleware:
    from django.core.asgi import get_asgi_application

    return BackgroundTasksMiddleware(Sent(get_asgi_application()))


async def get(app: BackgroundTasksMiddleware, url: str) -> int:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
        status = (await client.get(url)).status_code
    await app.wait_idle()
    return status


@pytest.mark.parametrize("view", ["sync", "async"])
@pytest.mark.parametrize("name", ["record_sync", "record_async"])
async def test_enqueue_in_a_view_runs_the_task_after_the_response(
    view: str, name: str, signalled: list[tuple[str, str]], loop_thread: int
) -> None:
    assert await get(application(), f"/tasks/{view}?task={name}&name=ada") == 200
    [result] = RESULTS
    assert [event[0] for event in EVENTS] == ["enqueued", "response sent", "ran"]
    assert EVENTS[0][1] == TaskResultStatus.READY  # not run inside enqueue
    ran_on = EVENTS[2][2]
    assert (ran_on == loop_thread) == (name == "record_async")  # sync ones in a worker thread
    assert result.status == TaskResultStatus.SUCCESSFUL
    assert result.return_value == "ADA"
    assert result.started_at is not None and result.finished_at is not None
    assert signalled == [
        ("task_enqueued", "READY"),
        ("task_started", "RUNNING"),
        ("task_finished", "SUCCESSFUL"),
    ]


async def test_failing_task_fails_its_result_is_logged_by_name_and_the_next_runs(
    caplog: pytest.LogCaptureFixture,
) -> None:
    app = application()
    assert await get(app, "/tasks/sync?task=fails&name=one") == 200
    assert await get(app, "/tasks/sync?task=record_sync&name=two") == 200
    failed, succeeded = RESULTS
    assert failed.status == TaskResultStatus.FAILED
    assert failed.errors[0].exception_class_path == "builtins.ValueError"
    assert "one failed" in failed.errors[0].traceback
    assert succeeded.status == TaskResultStatus.SUCCESSFUL
    assert "background task django_task_app.fails failed" in caplog.text


async def test_return_value_that_is_not_json_fails_the_result_as_django_does() -> None:
    assert await get(application(), "/tasks/sync?task=returns_no_json&name=j") == 200
    [result] = RESULTS
    assert result.status == TaskResultStatus.FAILED
    assert result.errors[0].exception_class_path == "builtins.TypeError"


async def test_task_that_takes_context_gets_its_own_result() -> None:
    assert await get(application(), "/tasks/sync?task=with_context&name=c") == 200
    [result] = RESULTS
    assert EVENTS[-1] == ("ran", "c", result.id)


async def test_tasks_of_a_failed_request_never_run_and_their_results_say_so(
    caplog: pytest.LogCaptureFixture, signalled: list[tuple[str, str]]
) -> None:
    caplog.set_level(logging.WARNING, "bgtasks")
    assert await get(application(), "/tasks/404?name=lost") == 404
    [result] = RESULTS
    assert not any(event[0] == "ran" for event in EVENTS)
    assert result.status == TaskResultStatus.FAILED
    assert result.started_at is None
    assert "never ran" in result.errors[0].traceback
    assert signalled == [("task_enqueued", "READY"), ("task_finished", "FAILED")]
    assert "django_task_app.record_sync" in caplog.text


def test_enqueue_outside_a_request_raises_naming_the_alternatives() -> None:
    with pytest.raises(InvalidTaskError, match="outside an HTTP request") as raised:
        record_sync.enqueue("nobody")
    assert "ImmediateBackend" in str(raised.value)
    assert "OUTSIDE_REQUEST" in str(raised.value)
    assert EVENTS == []


def test_enqueue_outside_a_request_runs_at_once_when_options_say_so() -> None:
    result = record_sync.using(backend="at_once_outside").enqueue("now")
    assert [("ran", "now", threading.get_ident())] == EVENTS
    assert result.status == TaskResultStatus.SUCCESSFUL
    assert result.return_value == "NOW"


def test_failure_outside_a_request_at_once_is_recorded_and_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    result = fails.using(backend="at_once_outside").enqueue("now")
    assert result.status == TaskResultStatus.FAILED
    assert "background task django_task_app.fails failed" in caplog.text


def test_async_task_outside_a_request_at_once_runs() -> None:
    result = record_async.using(backend="at_once_outside").enqueue("now")
    assert result.status == TaskResultStatus.SUCCESSFUL


def test_unknown_outside_request_option_is_refused() -> None:
    with pytest.raises(ValueError, match="OUTSIDE_REQUEST"):
        bgtasks.django.BackgroundTasksBackend("x", {"OPTIONS": {"OUTSIDE_REQUEST": "later"}})


def test_flags_claim_only_what_the_backend_does() -> None:
    backend = bgtasks.django.BackgroundTasksBackend
    assert backend.supports_async_task
    assert not backend.supports_defer
    assert not backend.supports_get_result
    assert not backend.supports_priority


def test_what_djangos_base_backend_validates_still_fails_at_the_call() -> None:
    with pytest.raises(InvalidTaskError, match="priority"):
        record_sync.using(priority=5)

    def nested(name: str) -> None:
        return None

    with pytest.raises(InvalidTaskError, match="module level"):
        task()(nested)


@pytest.mark.skipif(
    django.VERSION < (6,),
    reason=f"Django 6 (which needs Python 3.12) is not installed: Django {django.__version__}",
)
def test_django_6_uses_djangos_own_task_framework() -> None:
    import django.tasks.backends.base

    assert issubclass(
        bgtasks.django.BackgroundTasksBackend, django.tasks.backends.base.BaseTaskBackend
    )


def test_uses_the_backport_before_django_6() -> None:
    if django.VERSION >= (6,):
        pytest.skip("Django 6 has django.tasks; the backport is not used")
    import django_tasks.backends.base

    assert issubclass(
        bgtasks.django.BackgroundTasksBackend, django_tasks.backends.base.BaseTaskBackend
    )


def test_under_uvicorn_a_view_enqueues_and_the_task_runs(tmp_path: Path) -> None:
    from servers import serve, wait_for

    with serve("uvicorn", "framework_apps:django", tmp_path) as running:
        with running.connect() as connection:
            assert connection.get("/tasks/sync?task=mark_done&name=viauvicorn")[0] == 200
        with running.connect() as connection:
            assert connection.get("/tasks/404?name=never")[0] == 404
        wait_for((tmp_path / "viauvicorn.done").exists, "the enqueued task")
        wait_for(lambda: "record_sync" in running.log, "the drop of the 404's task")

