"""LocalDispatcher: ``enqueue`` with no broker, for laptops and tests.

Rules:

1. ``send`` acknowledges at once and hands each call to the engine of the loop that sent it,
   as a background task of its own: the engine task called as a plain function (a Celery or
   Procrastinate task object is callable), sync ones in a worker thread, in the context of
   their ``enqueue``. So the response is never held for the work itself.
2. Its work is counted: ``wait_idle()`` returns once it has run, and a
   ``BackgroundTasksMiddleware`` using it drains it at shutdown and includes it in its own
   ``wait_idle()``.
3. Nothing runs in process unless asked: ``enqueue`` without any dispatcher still raises.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ._engine import Work, current_engine
from .dispatch import Call
from .tasks import BackgroundTask, BackgroundTasks, Run

__all__ = ["LocalDispatcher"]


class LocalDispatcher:
    """A ``bgtasks.dispatch.Dispatcher`` that runs enqueued calls in this process."""

    def __init__(self) -> None:
        self._work = Work()

    def name_of(self, func: Any) -> str:
        if not callable(func):
            raise TypeError(f"enqueue needs a callable engine task, got {func!r}")
        name = getattr(func, "name", None)  # an engine task's own name (Celery's .name)
        return name if isinstance(name, str) else BackgroundTask(func).name

    def send(self, calls: Sequence[Call]) -> list[BaseException | None]:
        # In one of the engine's worker threads, which anyio.from_thread can reach the loop from.
        import anyio.from_thread  # here: importing it costs a few ms that most apps never need

        anyio.from_thread.run_sync(self._start, list(calls))
        return [None] * len(calls)

    def _start(self, calls: list[Call]) -> None:
        tasks = BackgroundTasks()
        for call in calls:
            task = tasks.add_task(call.func, *call.args, **call.kwargs)
            task.context = call.context
        job = Run(tasks)
        self._work.add(job)
        current_engine().submit(job)

    async def wait_idle(self) -> None:
        """Return once every call handed over so far has run."""
        await self._work.wait_idle()

    async def drain(self, timeout: float, reason: str) -> int:
        """Wait up to ``timeout`` for the calls in flight, then give up and name the rest."""
        return await self._work.drain(timeout, reason)
