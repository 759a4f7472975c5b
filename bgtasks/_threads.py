"""Where sync background tasks run: one queue-fed runner per event loop.

Theory of operation. A thread hop per task (what Starlette does) costs ~130 us here, and under
load 40 threads fight the event loop for the GIL. Instead each event loop has one ``_Runner``:

* Requests put ``SyncBatch``es (a request's consecutive sync tasks) on a queue. Under load the
  loop wakes a parked worker once per loop iteration (``_flush``), not once per request, and
  the worker hands finished batches back in bursts: one ``call_soon_threadsafe`` per burst.
  A lone batch on an idle runner wakes its worker at once.
* Workers are the runner's own threads. Each holds one token of the thread budget while it
  lives, parks on a private lock when the queue runs dry, and ends after ``_LINGER`` idle
  seconds.
* A dispatcher task on the loop starts workers: the first when work arrives, and more, up to
  the budget, only while queued work waits behind workers whose current batch has run for
  more than ``_STALL`` seconds (a slow SMTP call, a sleep). So one slow task never blocks the
  others, and quick tasks never wake a crowd of threads to fight over the GIL.

Rules:

1. Sync tasks never run on the event loop thread. Each runs in its own contextvars snapshot.
2. The thread budget (``current_thread_limiter``) belongs to bgtasks alone, so sync endpoints,
   which use anyio's default limiter, and background work never starve each other.
3. Everything here is per event loop (the runner is keyed by the asyncio loop or trio token,
   the limiter lives in a RunVar): a process may run asyncio, then trio.
4. A batch stops early at the first task that returns an awaitable; the caller awaits it on
   the loop before the next task starts. Results travel back in the batch object, never as a
   thread's return value: trio refuses a worker whose result is a coroutine.
5. Nothing a task raises kills its worker: a batch always comes back.
6. Cancellation is prompt: the waiting request leaves at once and sets ``stopped``; the worker
   starts no further task of that batch. A task already running in a thread cannot be
   interrupted, and finishes there.
7. When the loop ends, the dispatcher is cancelled: workers take no new batch, and the loop
   waits for each thread to end, so no worker outlives its loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import threading
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any

import anyio
from anyio.lowlevel import RunVar

if TYPE_CHECKING:
    from .tasks import BackgroundTask

DEFAULT_THREAD_LIMIT = 8
_STALL = 0.05  # seconds a batch may run before queued work gets another worker
_LINGER = 10.0  # seconds an idle worker waits for more work before its thread ends

_limiter: RunVar[anyio.CapacityLimiter] = RunVar("bgtasks_thread_limiter")


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
        self.errors: list[tuple[BackgroundTask, Exception]] | None = None  # made on demand
        self.awaitable: Awaitable[Any] | None = None
        self.done: asyncio.Future[None] | anyio.Event | None = None

    def run(self) -> None:
        # In a worker thread. Nothing may escape: the worker must live on to hand the batch back.
        for task in self.tasks:
            if self.stopped:
                return
            self.started += 1
            try:
                result = task.context.run(task.func, *task.args, **task.kwargs)
            except Exception as exc:
                self._fail(task, exc)
                continue
            except BaseException as exc:  # SystemExit and the like, raised in a thread
                error = RuntimeError(f"background task raised {exc!r} in a worker thread")
                error.__cause__ = exc
                self._fail(task, error)
                continue
            if inspect.isawaitable(result):
                self.awaitable = result
                return

    def _fail(self, task: BackgroundTask, error: Exception) -> None:
        if self.errors is None:
            self.errors = []
        self.errors.append((task, error))

    def start(self) -> Awaitable[Any]:
        """Queue the batch for a worker; return what to await until it has run.

        A waiter that leaves early (cancelled) must set ``stopped``.
        """
        runner = _current_runner()
        loop = runner.loop
        if loop is not None:  # asyncio: a bare future is the cheapest way to wait
            future: asyncio.Future[None] = loop.create_future()
            self.done = future
            runner.submit(self)
            return future
        event = self.done = anyio.Event()
        runner.submit(self)
        return event.wait()

    def finish(self) -> None:
        # On the loop thread, once the batch has run.
        done = self.done
        if isinstance(done, asyncio.Future):
            if not done.done():  # a cancelled waiter has gone
                done.set_result(None)
        elif done is not None:
            done.set()


_runners: dict[object, _Runner] = {}


def _current_runner() -> _Runner:
    key: object = asyncio._get_running_loop()
    if key is None:  # anyio's other backend is trio
        import trio

        key = trio.lowlevel.current_trio_token()
    runner = _runners.get(key)
    if runner is None:
        runner = _runners[key] = _Runner(key)
    return runner


class _Runner:
    def __init__(self, key: object) -> None:
        self.key = key
        self.loop = key if isinstance(key, asyncio.AbstractEventLoop) else None
        self.lock = threading.Lock()
        self.pending: deque[SyncBatch] = deque()
        self.finished: list[SyncBatch] = []
        self.flush_scheduled = False  # on the loop: a _flush is queued for this iteration
        self.delivery_scheduled = False  # in the workers: a _deliver is queued on the loop
        self.workers = 0  # worker threads alive, counted on the loop
        self.idle: list[threading.Lock] = []  # the bells of parked workers
        self.busy: dict[int, float] = {}  # worker thread -> when its current batch started
        self.closing = False
        self.kick = anyio.Event()
        if self.loop is not None:
            self.call_soon: Callable[[Callable[[], None]], object] = self.loop.call_soon
            self.call_soon_threadsafe: Callable[[Callable[[], None]], object] = (
                self.loop.call_soon_threadsafe
            )
            self.dispatcher: object = self.loop.create_task(self._dispatch())
        else:
            import trio

            self.call_soon = self.call_soon_threadsafe = key.run_sync_soon  # type: ignore[attr-defined]
            self.dispatcher = trio.lowlevel.spawn_system_task(self._dispatch)

    def submit(self, batch: SyncBatch) -> None:
        # On the loop thread. Under load, workers are woken once per loop iteration, not per
        # batch: by the time _flush runs, every request of this iteration has queued its work.
        # A lone batch on an idle runner wakes its worker at once instead.
        if not self.pending and self.idle and not self.flush_scheduled:
            self.pending.append(batch)
            self._flush()
            return
        self.pending.append(batch)
        if not self.flush_scheduled:
            self.flush_scheduled = True
            self.call_soon(self._flush)

    def _flush(self) -> None:
        self.flush_scheduled = False
        with self.lock:
            if not self.pending:
                return
            bell = self.idle.pop() if self.idle else None
        if bell is not None:
            bell.release()
        else:
            self.kick.set()  # no parked worker: the dispatcher starts one, or watches for stalls

    async def _dispatch(self) -> None:
        limiter = current_thread_limiter()
        try:
            async with anyio.create_task_group() as group:
                try:
                    while True:
                        await self.kick.wait()
                        self.kick = anyio.Event()
                        while self.pending:  # re-check while work waits: a worker may stall
                            if self._needs_worker(limiter):
                                self.workers += 1
                                group.start_soon(self._worker, limiter)
                            await anyio.sleep(_STALL)
                finally:  # the loop is ending: release the workers, then wait for them
                    self._close()
        finally:
            _runners.pop(self.key, None)

    def _close(self) -> None:
        with self.lock:
            self.closing = True
            bells, self.idle = self.idle, []
        for bell in bells:
            bell.release()

    def _needs_worker(self, limiter: anyio.CapacityLimiter) -> bool:
        with self.lock:
            if not self.pending:
                return False
            if self.workers == 0:
                return True
            stalled = time.monotonic() - _STALL
            return (
                not self.idle
                and self.workers < limiter.total_tokens
                and all(started < stalled for started in self.busy.values())
            )

    async def _worker(self, limiter: anyio.CapacityLimiter) -> None:
        # Holds one token of the thread budget for as long as its thread lives.
        exited = anyio.Event()
        try:
            async with limiter:
                thread = threading.Thread(
                    target=self._work, args=(exited,), name="bgtasks-worker", daemon=True
                )
                thread.start()
                try:
                    with anyio.CancelScope(shield=True):
                        await exited.wait()
                except BaseException:
                    # A loop's teardown can cancel even the shielded wait (asyncio.Runner
                    # cancels tasks natively). Close the runner and block until the worker
                    # has finished the task in hand: the thread must not outlive the loop.
                    self._close()
                    raise
                finally:
                    thread.join()  # normally the thread has signalled its last act already
        finally:
            self.workers -= 1
            if self.pending and not self.closing:
                self.kick.set()  # work arrived while this worker was leaving

    def _work(self, exited: anyio.Event) -> None:
        # In a worker thread: drain the queue, hand finished batches back in bursts.
        try:
            self._drain()
        finally:
            self._call_on_loop(exited.set)

    def _drain(self) -> None:
        me = threading.get_ident()
        bell = threading.Lock()  # held; the loop releases it to wake this worker
        bell.acquire()
        while True:
            with self.lock:
                if self.closing:
                    return
                batch = self.pending.popleft() if self.pending else None
                if batch is None:
                    self.idle.append(bell)
                else:
                    self.busy[me] = time.monotonic()
            if batch is None:
                if not bell.acquire(timeout=_LINGER):
                    with self.lock:
                        if bell in self.idle:  # nobody rang in time: give the thread back
                            self.idle.remove(bell)
                            return
                    bell.acquire()  # rung just as the wait timed out
                continue
            batch.run()
            with self.lock:
                del self.busy[me]
                self.finished.append(batch)
                schedule = not self.delivery_scheduled
                self.delivery_scheduled = True
            if schedule:
                self._call_on_loop(self._deliver)

    def _call_on_loop(self, func: Callable[[], None]) -> None:
        with contextlib.suppress(RuntimeError):  # the loop has closed: nobody waits any more
            self.call_soon_threadsafe(func)

    def _deliver(self) -> None:
        # On the loop thread.
        with self.lock:
            finished, self.finished = self.finished, []
            self.delivery_scheduled = False
        for batch in finished:
            batch.finish()
