"""Where sync background tasks run: a thread budget of their own, and batches.

Rules:

1. Sync tasks never run on the event loop. They run in anyio worker threads, under a
   CapacityLimiter that belongs to bgtasks alone, so that sync endpoints (which use anyio's
   default limiter) and background work can never starve each other.
2. The limiter lives in a RunVar: one per running event loop. A process may run asyncio and
   then trio; each loop gets a fresh limiter of the default size.
3. Consecutive sync tasks travel in one `SyncBatch` and share one thread hop. A hop costs
   far more than a typical task (ANCHORS.md measures ~140 us), so batching is the win.
4. A batch stops early at the first task that returns an awaitable, so that the awaitable
   is awaited on the loop before the next task starts: order is kept.
5. Cancellation is prompt: the waiting side leaves at once and sets `stopped`, and the
   thread starts no further task of the batch. The task already running in the thread cannot
   be interrupted; it finishes there.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Sequence
from typing import TYPE_CHECKING, Any

import anyio
import anyio.to_thread
from anyio.lowlevel import RunVar

if TYPE_CHECKING:
    from .tasks import BackgroundTask

DEFAULT_THREAD_LIMIT = 8

_limiter: RunVar[anyio.CapacityLimiter] = RunVar("bgtasks_thread_limiter")


def current_thread_limiter() -> anyio.CapacityLimiter:
    """Return the thread budget of background sync tasks on the running event loop.

    Each event loop gets its own limiter with ``DEFAULT_THREAD_LIMIT`` (8) tokens. It is
    separate from anyio's default limiter, which sync endpoints, file responses and uploads
    share, so exhausting either never blocks the other. Change the budget by setting
    ``total_tokens`` on the returned limiter, typically at startup::

        bgtasks.current_thread_limiter().total_tokens = 16

    Must be called from within a running event loop.
    """
    try:
        return _limiter.get()
    except LookupError:
        limiter = anyio.CapacityLimiter(DEFAULT_THREAD_LIMIT)
        _limiter.set(limiter)
        return limiter


class SyncBatch:
    """Consecutive sync tasks that run, in order, in one worker thread."""

    __slots__ = ("tasks", "started", "stopped", "errors", "awaitable")

    def __init__(self, tasks: Sequence[BackgroundTask]) -> None:
        self.tasks = tasks
        self.started = 0
        self.stopped = False
        self.errors: list[tuple[BackgroundTask, Exception]] = []
        self.awaitable: Awaitable[Any] | None = None

    def run(self) -> None:
        # Runs in the worker thread. The result travels back through the batch object, never
        # as the thread's return value: trio refuses a worker whose result is a coroutine.
        for task in self.tasks:
            if self.stopped:
                return
            self.started += 1
            try:
                result = task.context.run(task.func, *task.args, **task.kwargs)
            except Exception as exc:
                self.errors.append((task, exc))
                continue
            if inspect.isawaitable(result):
                self.awaitable = result
                return

    async def __call__(self) -> None:
        try:
            await anyio.to_thread.run_sync(
                self.run, abandon_on_cancel=True, limiter=current_thread_limiter()
            )
        except BaseException:
            self.stopped = True
            raise
