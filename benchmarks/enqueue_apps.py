"""Apps for benchmarks/enqueue.py: one Celery call per request, three ways, beside the
in-process write_log task. ``BGTASKS_BROKER_URL`` names the Redis broker."""

from __future__ import annotations

import os
from typing import Any

from apps import BODY_MESSAGE, START, answer_lifespan, write_log
from celery import Celery

import bgtasks
from bgtasks.celery import CeleryDispatcher

celery_app = Celery("bench", broker=os.environ.get("BGTASKS_BROKER_URL", "redis://127.0.0.1:1/0"))


@celery_app.task(name="bench.record")
def record(path: str) -> None:
    write_log(path)


async def _enqueue(scope: Any, receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        return await answer_lifespan(receive, send)
    bgtasks.get_background_tasks(scope).enqueue(record, scope["path"])
    await send(START)
    await send(BODY_MESSAGE)


async def delay_in_handler(scope: Any, receive: Any, send: Any) -> None:
    """What handlers do today: publish with .delay() on the event loop, then respond."""
    if scope["type"] == "lifespan":
        return await answer_lifespan(receive, send)
    record.delay(scope["path"])
    await send(START)
    await send(BODY_MESSAGE)


async def _write_log(scope: Any, receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        return await answer_lifespan(receive, send)
    bgtasks.get_background_tasks(scope).add_task(write_log, scope["path"])
    await send(START)
    await send(BODY_MESSAGE)


enqueue = bgtasks.BackgroundTasksMiddleware(_enqueue, dispatcher=CeleryDispatcher(celery_app))
in_process_write_log = bgtasks.BackgroundTasksMiddleware(_write_log)
