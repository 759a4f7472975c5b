"""README's retry recipe for plain add_task, with tenacity, on asyncio and trio: a task that
fails twice then succeeds runs three times in the background, and one that keeps failing is
logged by name once its attempts are spent. In memory, so a retry dies with the process; for
retries that survive it, enqueue to SQLiteDispatcher(retries=...)."""

from __future__ import annotations

import logging

import anyio
import pytest
from helpers import Recorder, http_scope, no_receive
from tenacity import AsyncRetrying, retry, stop_after_attempt, wait_exponential

from bgtasks import BackgroundTasks, Response

attempts: list[str] = []


async def send_welcome(to: str) -> None:
    attempts.append(to)
    if len(attempts) < 3:
        raise ConnectionError("smtp down")


async def send_welcome_with_retries(to: str) -> None:
    # anyio.sleep, so that the waits work on trio as on asyncio.
    retrying = AsyncRetrying(
        stop=stop_after_attempt(3),
        wait=wait_exponential(multiplier=0.01),
        sleep=anyio.sleep,
        reraise=True,
    )
    async for attempt in retrying:
        with attempt:
            await send_welcome(to)


@retry(stop=stop_after_attempt(2), wait=wait_exponential(multiplier=0.01), reraise=True)
def write_audit_log(line: str) -> None:  # sync: retried in its worker thread
    attempts.append(line)
    raise OSError("disk full")


@pytest.fixture(autouse=True)
def fresh() -> None:
    attempts.clear()


async def test_an_async_task_is_retried_after_the_response() -> None:
    tasks = BackgroundTasks()
    tasks.add_task(send_welcome_with_retries, "ada")
    client = Recorder()
    await Response("ok", background=tasks)(http_scope(), no_receive, client)
    assert client.types == ["http.response.start", "http.response.body"]
    assert attempts == ["ada", "ada", "ada"]


async def test_a_sync_task_that_keeps_failing_is_logged_by_name_after_its_attempts(
    caplog: pytest.LogCaptureFixture,
) -> None:
    tasks = BackgroundTasks()
    tasks.add_task(write_audit_log, "signup")
    await Response("ok", background=tasks)(http_scope(), no_receive, Recorder())
    assert attempts == ["signup", "signup"]
    [error] = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert "write_audit_log" in error.getMessage()
    assert isinstance(error.exc_info[1], OSError) if error.exc_info else False
