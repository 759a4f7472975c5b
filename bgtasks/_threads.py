"""Where sync background tasks run: one queue-fed runner per event loop.

Theory of operation. A thread hop per task (what Starlette does) costs ~140 us here, and under
load 40 threads fight the event loop for the GIL. Instead each event loop has one ``_Runner``:

* Requests put ``SyncBatch``es (a request's consecutive sync tasks) on a queue. Normally one
  worker thread drains it, so work from many requests shares each wake-up, and the loop is
  told about finished batches in bursts: one ``call_soon_threadsafe`` per burst, not per task.
* A worker lingers for ``_LINGER`` seconds when the queue runs dry, so steady traffic never
  pays for a thread start, and then gives its thread back.
* A dispatcher task on the loop adds workers, up to the thread budget, only while queued work
  waits behind workers whose current batch has run for more than ``_STALL`` seconds (a slow
  SMTP call, a sleep). So one slow task never blocks the others, and quick tasks never wake a
  crowd of threads to fight over the GIL.

Rules:

1. Sync tasks never run on the event loop thread. Each runs in its own contextvars snapshot.
2. The thread budget (``current_thread_limiter``) belongs to bgtasks alone, so sync endpoints,
   which use anyio's default limiter, and background work never starve each other.
3. Everything here is per event loop (anyio RunVar): a process may run asyncio, then trio.
4. A batch stops early at the first task that returns an awaitable; the caller awaits it on
   the loop before the next task starts. Results travel back in the batch object, never as a
   thread's return value: trio refuses a worker whose result is a coroutine.
5. Cancellation is prompt: the waiting request leaves at once and sets ``stopped``; the worker
   starts no further task of that batch. A task already running in a thread cannot be
   interrupted, and finishes there.
6. When the loop ends, the dispatcher is cancelled: workers take no new batch, and the loop
   waits for each to return its thread, so no worker outlives its loop.
"""

from __future__ import annotations

import asyncio
import inspect
import threading
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any

import anyio
import anyio.to_thread
from anyio.lowlevel import RunVar

if TYPE_CHECKING:
    from .tasks import BackgroundTask

DEFAULT_THREAD_LIMIT = 8
_STALL = 0.05  # seconds a batch may run before queued work gets another worker
_LINGER = 0.25  # seconds an idle worker waits for more work before giving its thread back

_limiter: RunVar[anyio.CapacityLimiter] = RunVar("bgtasks_thread_limiter")
_runner: RunVar[_Runner] = RunVar("bgtasks_runner")


def current_thread_limiter() -> anyio.CapacityLimiter:
    """Return the thread budget of background sync tasks on the running event loop.

    Each event loop gets its own limiter with ``DEFAULT_THREAD_LIMIT`` (8) tokens. It is
    separate from anyio's default limiter, which sync endpoints, file responses and uploads
    share, so exhausting either never blocks the other. Normally one thread runs all sync
    tasks; more are used, up to this budget, only while queued work waits behind slow tasks.
    Change the budget by setting ``total_tokens``, typically at startup::

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
    """Consecutive sync tasks of one request, run in order in one worker thread."""

    __slots__ = ("tasks", "started", "stopped", "errors", "awaitable", "done")

    def __init__(self, tasks: Sequence[BackgroundTask]) -> None:
        self.tasks = tasks
        self.started = 0
        self.stopped = False
        self.errors: list[tuple[BackgroundTask, Exception]] = []
        self.awaitable: Awaitable[Any] | None = None
        self.done: anyio.Event | None = None

    def run(self) -> None:
        # In a worker thread.
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
            runner = _runner.get()
        except LookupError:
            runner = _Runner()
            _runner.set(runner)
        self.done = done = anyio.Event()
        runner.submit(self)
        try:
            await done.wait()
        except BaseException:
            self.stopped = True
            raise


def _call_soon_threadsafe() -> Callable[[Callable[[], None]], object]:
    try:
        return asyncio.get_running_loop().call_soon_threadsafe
    except RuntimeError:  # not asyncio: anyio's other backend is trio
        import trio

        return trio.lowlevel.current_trio_token().run_sync_soon


def _spawn_system_task(func: Callable[[], Awaitable[None]]) -> object:
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        import trio

        trio.lowlevel.spawn_system_task(func)
        return None
    return loop.create_task(func())  # type: ignore[arg-type]


class _Runner:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.work_ready = threading.Condition(self.lock)
        self.pending: deque[SyncBatch] = deque()
        self.finished: list[SyncBatch] = []
        self.delivery_scheduled = False
        self.workers = 0  # worker hops alive, counted on the loop
        self.parked = 0  # workers waiting for work
        self.busy: dict[int, float] = {}  # worker thread -> when its current batch started
        self.closing = False
        self.kick = anyio.Event()
        self.call_soon_threadsafe = _call_soon_threadsafe()
        self.dispatcher = _spawn_system_task(self._dispatch)  # keep a reference to the task

    def submit(self, batch: SyncBatch) -> None:
        # On the loop thread.
        with self.lock:
            self.pending.append(batch)
            if self.parked:
                self.work_ready.notify()
                return
        self.kick.set()

    async def _dispatch(self) -> None:
        limiter = current_thread_limiter()
        async with anyio.create_task_group() as group:
            try:
                while True:
                    await self.kick.wait()
                    self.kick = anyio.Event()
                    while self.pending:  # re-check while work waits: a worker may stall later
                        if self._needs_worker(limiter):
                            self.workers += 1
                            group.start_soon(self._worker, limiter)
                        await anyio.sleep(_STALL)
            finally:  # the loop is ending: release the workers, then wait for them to return
                with self.lock:
                    self.closing = True
                    self.work_ready.notify_all()

    def _needs_worker(self, limiter: anyio.CapacityLimiter) -> bool:
        with self.lock:
            if not self.pending:
                return False
            if self.workers == 0:
                return True
            stalled = time.monotonic() - _STALL
            return (
                self.parked == 0
                and self.workers < limiter.total_tokens
                and all(started < stalled for started in self.busy.values())
            )

    async def _worker(self, limiter: anyio.CapacityLimiter) -> None:
        try:
            await anyio.to_thread.run_sync(self._work, limiter=limiter)
        finally:
            self.workers -= 1
            if self.pending and not self.closing:
                self.kick.set()  # work arrived while this worker was leaving

    def _work(self) -> None:
        # In a worker thread: drain the queue, hand finished batches back in bursts.
        me = threading.get_ident()
        while True:
            with self.lock:
                while not self.pending and not self.closing:
                    self.parked += 1
                    woken = self.work_ready.wait(_LINGER)
                    self.parked -= 1
                    if not woken and not self.pending:
                        return
                if self.closing:
                    return
                batch = self.pending.popleft()
                self.busy[me] = time.monotonic()
            batch.run()
            with self.lock:
                del self.busy[me]
                self.finished.append(batch)
                schedule = not self.delivery_scheduled
                self.delivery_scheduled = True
            if schedule:
                try:
                    self.call_soon_threadsafe(self._deliver)
                except RuntimeError:  # the loop has closed: nobody is waiting any more
                    return

    def _deliver(self) -> None:
        # On the loop thread.
        with self.lock:
            finished, self.finished = self.finished, []
            self.delivery_scheduled = False
        for batch in finished:
            assert batch.done is not None
            batch.done.set()
