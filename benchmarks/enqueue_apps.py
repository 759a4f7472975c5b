"""Apps for benchmarks/enqueue.py: one call per request to SQLite or to Celery, beside the same
work as an in-process task. ``BGTASKS_BROKER_URL`` names the Redis broker,
``BGTASKS_BENCH_SQLITE`` the SQLite file."""

from __future__ import annotations

import os
from typing import Any

from apps import BODY_MESSAGE, START, answer_lifespan, write_log, write_log_async
from celery import Celery

import bgtasks
from bgtasks.celery import CeleryDispatcher
from bgtasks.sqlite import SQLiteDispatcher

celery_app = Celery("bench", broker=os.environ.get("BGTASKS_BROKER_URL", "redis://127.0.0.1:1/0"))


@celery_app.task(name="bench.record")
def record(path: str) -> None:
    write_log(path)


def _enqueuing(task: Any) -> Any:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            return await answer_lifespan(receive, send)
        bgtasks.get_background_tasks(scope).enqueue(task, scope["path"])
        await send(START)
        await send(BODY_MESSAGE)

    return app


async def delay_in_handler(scope: Any, receive: Any, send: Any) -> None:
    """What handlers do today: publish with .delay() on the event loop, then respond."""
    if scope["type"] == "lifespan":
        return await answer_lifespan(receive, send)
    record.delay(scope["path"])
    await send(START)
    await send(BODY_MESSAGE)


def _adding(task: Any) -> Any:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            return await answer_lifespan(receive, send)
        bgtasks.get_background_tasks(scope).add_task(task, scope["path"])
        await send(START)
        await send(BODY_MESSAGE)

    return app


enqueue = bgtasks.BackgroundTasksMiddleware(
    _enqueuing(record), dispatcher=CeleryDispatcher(celery_app)
)
in_process_write_log = bgtasks.BackgroundTasksMiddleware(_adding(write_log))
in_process_write_log_async = bgtasks.BackgroundTasksMiddleware(_adding(write_log_async))

jobs = SQLiteDispatcher(os.environ.get("BGTASKS_BENCH_SQLITE", "bench.sqlite3"))
jobs.task(write_log)
jobs.task(write_log_async)
sqlite_write_log = bgtasks.BackgroundTasksMiddleware(_enqueuing(write_log), dispatcher=jobs)
sqlite_write_log_async = bgtasks.BackgroundTasksMiddleware(
    _enqueuing(write_log_async), dispatcher=jobs
)
