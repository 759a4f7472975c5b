"""The engine: where all background work runs, one per event loop. It knows nothing of ASGI.

Theory of operation. Spawning a task, opening a task group or entering a cancel scope per
request costs more than a whole Starlette response (a shielded anyio scope alone: ~2.6 us on
asyncio, ~6 us on trio). So nothing here is per request; everything is long-lived, per loop:

* **Jobs.** A ``Job`` is one request's background work. ``Engine.submit`` queues it. A job of
  sync tasks only goes straight to the thread runner; any other job goes to a consumer. The
  job's ``settle`` runs once, on the loop, when it has finished or been given up.
* **Consumers** are long-lived tasks (asyncio tasks, trio system tasks) that run async jobs one
  after another. A submit wakes one parked consumer, or starts one when none is parked, unless
  one is already on its way to the queue. A consumer that takes a job while more are queued
  makes sure another consumer follows, so a job that suspends never holds up the rest. At most
  ``_KEEP_IDLE`` consumers stay parked; the rest end. Cancelling a job cancels its consumer's
  own scope: the consumer ends with it, and a new one starts on demand.
* **Eager tasks** (asyncio 3.12+). A job someone waits for (the attached middleware) starts in
  a task of its own whose first step runs at once, inside ``submit``. Work that never suspends
  is done before ``submit`` returns and costs no loop iteration; work that suspends goes on in
  that task, which the request's cancellation never reaches. Cancelling the job cancels it.
* **Workers** are the engine's own threads, fed from a queue of ``SyncBatch``es. Under load
  the loop wakes a parked worker once per loop iteration, and workers hand finished batches
  back in bursts, one ``call_soon_threadsafe`` per burst. A watcher on the loop starts another
  worker, up to the budget, whenever the oldest queued batch has waited ``_WAIT`` seconds:
  quick tasks share one thread, slow ones (a 5 ms database write) get as many as they need.
* **Work** is what one owner (a middleware) has in flight: it counts jobs, bounds them
  (``wait_room``), and drains them at shutdown.

Rules:

1. Sync tasks never run on the event loop thread; async tasks never run in a worker thread.
2. The thread budget (``current_thread_limiter``) belongs to bgtasks alone, so sync endpoints,
   which use anyio's default limiter, and background work never starve each other.
3. Everything is per event loop, keyed by the asyncio loop or trio token: a process may run
   asyncio, then trio.
4. A batch stops early at the first task that returns an awaitable; its job then continues on
   a consumer. Results travel in the batch object, never as a thread's return value.
5. Nothing a task raises kills a worker or a consumer.
6. A task running in a thread cannot be interrupted. Cancelling its job sets ``stopped``: the
   worker starts no further task of it. When the loop ends, parked workers end with it; a
   worker still inside a task is abandoned, never joined, so shutdown ends on time. It
   finishes its task and exits without touching the loop.
7. Consumers and workers run in an empty context: a request's contextvars never leak into
   them. Each task runs in its own snapshot (see ``tasks``).
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import sys
import threading
import time
import types
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from collections.abc import Awaitable as AwaitableABC
from typing import TYPE_CHECKING, Any, Protocol

import anyio

from . import _observe

if TYPE_CHECKING:
    import asyncio

    import trio

DEFAULT_THREAD_LIMIT = 40
_WAIT = 0.01  # seconds queued sync work may wait before another worker starts
_LINGER = 10.0  # seconds an idle worker waits for more work before its thread ends
_KEEP_IDLE = 16  # parked consumers kept per loop; more end instead of parking
_NAMING = 0.5  # seconds a drain waits, at least, for cancelled jobs to name their tasks
# asyncio 3.12+ can start a task eagerly: its first step runs at once, and a task that never
# suspends costs no loop iteration (~0.7 us in all, against two loop iterations for a hand-off
# to a consumer and back). Older asyncio and trio hand off.


def _eager_starter(
    loop: asyncio.AbstractEventLoop,
) -> Callable[[Coroutine[Any, Any, None]], asyncio.Task[None]] | None:
    # What starts a coroutine in an eager task on `loop`, each in an empty context of its own;
    # None where asyncio cannot.
    if sys.version_info >= (3, 12):
        import asyncio

        make = functools.partial(asyncio.Task, loop=loop, eager_start=True)
        new_context = contextvars.Context
        return lambda coroutine: make(coroutine, context=new_context())
    return None


def current_thread_limiter() -> anyio.CapacityLimiter:
    """Return the thread budget of background sync tasks on the running event loop.

    Each event loop gets its own limiter with ``DEFAULT_THREAD_LIMIT`` (40, as anyio's default,
    because background sync work is mostly I/O) tokens. It is separate from anyio's default
    limiter, which sync endpoints, file responses and uploads share, so exhausting either
    never blocks the other. Threads start only while queued work waits: quick tasks share one
    thread. Change the budget by setting ``total_tokens``, typically at startup::

        bgtasks.current_thread_limiter().total_tokens = 16

    Must be called from within a running event loop.
    """
    engine = current_engine()
    if engine.limiter is None:
        engine.limiter = anyio.CapacityLimiter(DEFAULT_THREAD_LIMIT)
    return engine.limiter


class SyncCall(Protocol):
    """What a worker thread needs of a sync task."""

    @property
    def func(self) -> Callable[..., Any]: ...
    @property
    def args(self) -> tuple[Any, ...]: ...
    @property
    def kwargs(self) -> dict[str, Any]: ...
    @property
    def context(self) -> contextvars.Context: ...


# Signals: one waiter, set once, the cheapest way each backend has to park and wake a task.


class Signal:
    """Set once from the loop thread; ``wait`` returns once it is set."""

    __slots__ = ()

    def set(self) -> None:
        raise NotImplementedError

    def wait(self) -> Awaitable[Any]:
        raise NotImplementedError


class _AsyncioSignal(Signal):
    __slots__ = ("future",)

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.future: asyncio.Future[None] = loop.create_future()

    def set(self) -> None:
        if not self.future.done():  # a cancelled waiter has gone
            self.future.set_result(None)

    def wait(self) -> Awaitable[Any]:
        return self.future


class _TrioSignal(Signal):
    __slots__ = ("is_set", "task")

    def __init__(self) -> None:
        self.is_set = False
        self.task: trio.lowlevel.Task | None = None

    def set(self) -> None:
        self.is_set = True
        task, self.task = self.task, None
        if task is not None:
            import trio

            trio.lowlevel.reschedule(task)

    async def wait(self) -> None:
        import trio

        if self.is_set:
            return
        self.task = trio.lowlevel.current_task()

        def abort(raise_cancel: object) -> trio.lowlevel.Abort:
            self.task = None
            return trio.lowlevel.Abort.SUCCEEDED

        await trio.lowlevel.wait_task_rescheduled(abort)


class Job:
    """One owner's unit of background work. Subclasses say how it runs and what it names.

    ``run`` runs the work on a consumer and raises nothing but cancellation. ``sync_calls``
    returns the calls when the job is sync only (it then goes straight to the threads), else
    None. ``settle`` runs once, on the loop, when the job has ended either way.
    """

    __slots__ = ("work", "signal", "scope", "batch", "settled")

    def __init__(self) -> None:
        self.work: Work | None = None
        self.signal: Signal | None = None
        # While it runs: its consumer's cancel scope, or the eager task that runs it.
        self.scope: anyio.CancelScope | asyncio.Task[None] | None = None
        self.batch: SyncBatch | None = None  # while in the threads
        self.settled = False

    async def run(self) -> None:
        raise NotImplementedError

    def sync_calls(self) -> Sequence[SyncCall] | None:
        return None

    def batch_done(self, batch: SyncBatch) -> bool:
        """The thread batch came back: return True if the job is complete."""
        raise NotImplementedError

    def abandon(self, reason: str) -> None:
        """Give the job up before it ends, naming what did not run or finish."""
        raise NotImplementedError

    def settle(self) -> None:
        if self.settled:
            return
        self.settled = True
        if self.signal is not None:
            self.signal.set()
        if self.work is not None:
            self.work.remove(self)

    def cancel(self, reason: str) -> None:
        """Stop the job: cancel its consumer, or stop its thread batch and give it up."""
        if self.settled:
            return
        if self.scope is not None:
            self.scope.cancel()  # the consumer's run names what it cancels, then settles
            return
        self.abandon(reason)  # queued for a consumer, or in the threads
        if self.batch is not None:
            self.batch.stopped = True
            self.batch = None
        self.settle()


class Engine:
    """All execution for one event loop: the consumers and the thread runner."""

    def __init__(self, key: object) -> None:
        self.key = key
        self.loop: asyncio.AbstractEventLoop | None = (
            None if _is_trio_token(key) else key  # type: ignore[assignment]
        )
        self.pending: deque[Job] = deque()
        self.idle: list[Signal] = []  # parked consumers
        self.waking = 0  # consumers woken or started, not yet at the queue
        self.consumers = 0
        self.limiter: anyio.CapacityLimiter | None = None  # see current_thread_limiter
        self.start_eagerly = _eager_starter(self.loop) if self.loop is not None else None
        self.threads = _Runner(self)

    def signal(self) -> Signal:
        loop = self.loop
        return _AsyncioSignal(loop) if loop is not None else _TrioSignal()

    def submit(self, job: Job, now: bool = False) -> None:
        """Queue ``job``; it runs on a consumer, or in the threads when it is sync only.

        ``now``: someone waits for the job, so on asyncio 3.12+ it starts at once in a task of
        its own (an eager task): if it never suspends, it is settled when this returns.
        """
        calls = job.sync_calls()
        if calls is not None:
            batch = job.batch = SyncBatch(calls, job)
            self.threads.submit(batch)
            return
        if now and self.start_eagerly is not None:
            task = self.start_eagerly(self._run_now(job))
            if not job.settled:
                job.scope = task
            return
        self.pending.append(job)
        if not self.waking:
            self._wake_one()

    def resume(self, job: Job) -> None:
        # A sync-only job whose batch left work that needs the loop: a consumer finishes it.
        self.pending.append(job)
        if not self.waking:
            self._wake_one()

    def _wake_one(self) -> None:
        self.waking += 1
        if self.idle:
            self.idle.pop().set()
            return
        self.consumers += 1
        context = contextvars.Context()
        if self.loop is not None:
            context.run(self.loop.create_task, self._consume())
        else:
            import trio

            trio.lowlevel.spawn_system_task(self._consume, context=context)

    async def _run_now(self, job: Job) -> None:
        try:
            await job.run()
        except Exception:  # a bug of ours: the job still settles
            import logging

            logging.getLogger("bgtasks").exception("bgtasks failed a job")
        finally:
            job.scope = None
            job.settle()

    async def _consume(self) -> None:
        job: Job | None = None
        ended = False  # normally, or by a job's cancellation; not by the loop's teardown
        try:
            with anyio.CancelScope() as scope:
                self.waking -= 1
                while True:
                    pending = self.pending
                    if not pending:
                        if len(self.idle) >= _KEEP_IDLE:
                            return
                        signal = self.signal()
                        self.idle.append(signal)
                        try:
                            await signal.wait()
                        except BaseException:
                            with contextlib.suppress(ValueError):
                                self.idle.remove(signal)
                            raise
                        self.waking -= 1
                        continue
                    job = pending.popleft()
                    if job.settled:  # given up while it waited
                        job = None
                        continue
                    if pending and not self.waking:
                        self._wake_one()  # if this job suspends, the next one still runs
                    job.scope = scope
                    try:
                        await job.run()
                    except Exception:  # a bug of ours: the job still settles, the consumer lives
                        import logging

                        logging.getLogger("bgtasks").exception("bgtasks consumer failed a job")
                    job.scope = None
                    job.settle()
                    job = None
            ended = True
        finally:
            self.consumers -= 1
            if job is not None:  # cancelled with a job in hand: its run named what was lost
                job.scope = None
                job.settle()
            if ended and self.pending and not self.waking:
                self._wake_one()


_engines: dict[object, Engine] = {}


def _is_trio_token(key: object) -> bool:
    trio = sys.modules.get("trio")
    return trio is not None and isinstance(key, trio.lowlevel.TrioToken)


def current_engine() -> Engine:
    """The engine of the running event loop (made on first use)."""
    # asyncio is imported only by an app that runs on it: a trio app never pays for it.
    asyncio = sys.modules.get("asyncio")
    key: object = asyncio._get_running_loop() if asyncio is not None else None
    if key is None:  # anyio's other backend is trio
        import trio

        key = trio.lowlevel.current_trio_token()
    engine = _engines.get(key)
    if engine is None:
        engine = _engines[key] = Engine(key)
    return engine


class Work:
    """The jobs one owner has in flight: counted, bounded, waited for and drained.

    ``wait_room`` is the back-pressure: it returns once fewer than ``limit`` jobs are in
    flight. ``drain`` waits up to a timeout, then cancels what is left, each job naming its
    unfinished tasks.
    """

    __slots__ = ("jobs", "idle", "room")

    def __init__(self) -> None:
        self.jobs: set[Job] = set()
        self.idle: list[anyio.Event] = []
        self.room: deque[anyio.Event] = deque()

    def add(self, job: Job) -> None:
        job.work = self
        self.jobs.add(job)

    def remove(self, job: Job) -> None:
        self.jobs.discard(job)
        if self.room:
            self.room.popleft().set()
        if not self.jobs and self.idle:
            idle, self.idle = self.idle, []
            for event in idle:
                event.set()

    def __len__(self) -> int:
        return len(self.jobs)

    async def wait_room(self, limit: int) -> None:
        started = time.monotonic()
        try:
            await self._wait_room(limit)
        finally:
            if _observe.observers:
                _observe.report("waited", time.monotonic() - started)

    async def _wait_room(self, limit: int) -> None:
        while len(self.jobs) >= limit:
            event = anyio.Event()
            self.room.append(event)
            try:
                await event.wait()
            except BaseException:
                with contextlib.suppress(ValueError):
                    self.room.remove(event)
                if self.room and len(self.jobs) < limit:
                    self.room.popleft().set()  # pass on the wake-up this waiter took
                raise

    async def wait_idle(self) -> None:
        while self.jobs:
            event = anyio.Event()
            self.idle.append(event)
            await event.wait()

    async def drain(self, timeout: float, reason: str) -> int:
        """Wait up to ``timeout`` for all jobs; cancel the rest. Return how many were cancelled."""
        with anyio.move_on_after(timeout):
            await self.wait_idle()
        left = list(self.jobs)
        for job in left:
            job.cancel(reason)
        # Cancelled consumers name their tasks as they end, in a loop iteration or two; even a
        # drain with no time left (``limit_shutdown(0)``) lets them.
        with anyio.move_on_after(max(timeout, _NAMING)):
            await self.wait_idle()
        return len(left)


# The threads.


class SyncBatch:
    """Consecutive sync tasks of one job, run in order in one worker thread."""

    __slots__ = (
        "calls",
        "job",
        "observed",
        "started",
        "stopped",
        "errors",
        "awaitable",
        "done",
        "queued",
    )

    def __init__(
        self, calls: Sequence[SyncCall], job: Job | None = None, observed: bool = True
    ) -> None:
        self.calls = calls
        self.job = job
        self.observed = observed  # background tasks are reported to observers; sends are not
        self.started = 0
        self.stopped = False
        self.errors: list[tuple[Any, Exception]] | None = None  # made on demand
        self.awaitable: Awaitable[Any] | None = None
        self.done: Signal | None = None
        self.queued = 0.0  # when it was queued, by time.monotonic()

    def run(self) -> None:
        # In a worker thread. Nothing may escape: the worker must live on to hand it back.
        observed = self.observed and bool(_observe.observers)
        for call in self.calls:
            if self.stopped:
                return
            self.started += 1
            context = call.context
            if observed:
                context.run(_observe.report, "started", call)
            try:
                result = context.run(call.func, *call.args, **call.kwargs)
            except Exception as exc:
                self._fail(call, exc, observed)
                continue
            except BaseException as exc:  # SystemExit and the like, raised in a thread
                error = RuntimeError(f"background task raised {exc!r} in a worker thread")
                error.__cause__ = exc
                self._fail(call, error, observed)
                continue
            if result is not None and _is_awaitable(result):
                self.awaitable = result  # its task finishes when the loop has awaited it
                return
            if observed:
                context.run(_observe.report, "finished", call, None, False)

    def _fail(self, call: SyncCall, error: Exception, observed: bool) -> None:
        if self.errors is None:
            self.errors = []
        self.errors.append((call, error))
        if observed:
            call.context.run(_observe.report, "finished", call, error, False)

    def start(self) -> Awaitable[Any]:
        """Queue the batch for a worker; return what to await until it has run.

        A waiter that leaves early (cancelled) must set ``stopped``.
        """
        engine = current_engine()
        self.done = engine.signal()
        engine.threads.submit(self)
        return self.done.wait()

    def finish(self, engine: Engine) -> None:
        # On the loop thread, once the batch has run.
        job = self.job
        if job is None:
            if self.done is not None:
                self.done.set()
        elif job.batch is self:  # else the job was given up while the batch ran
            job.batch = None
            if job.batch_done(self):
                job.settle()
            else:
                engine.resume(job)


def _is_awaitable(value: object) -> bool:
    # inspect.isawaitable, without importing inspect (~4 ms at import time).
    if isinstance(value, (types.CoroutineType, AwaitableABC)):
        return True
    return isinstance(value, types.GeneratorType) and bool(
        value.gi_code.co_flags & 0x100  # CO_ITERABLE_COROUTINE: a @types.coroutine generator
    )


class _Runner:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.lock = threading.Lock()
        self.pending: deque[SyncBatch] = deque()
        self.finished: list[SyncBatch] = []
        self.flush_scheduled = False  # on the loop: a _flush is queued for this iteration
        self.delivery_scheduled = False  # in the workers: a _deliver is queued on the loop
        self.workers = 0  # worker threads alive, counted on the loop
        self.idle: list[threading.Lock] = []  # the bells of parked workers
        self.running: dict[int, SyncBatch] = {}  # worker thread -> the batch in its hands
        self.closing = False
        self.watching = False
        self.kick: Signal | None = None
        key = engine.key
        import anyio.lowlevel  # here, not at import: it costs ~4 ms and only runners need it

        self.token = anyio.lowlevel.current_token()  # lets tasks use anyio.from_thread
        loop = engine.loop
        if loop is not None:
            self.call_soon: Callable[[Callable[[], None]], object] = loop.call_soon
            self.call_soon_threadsafe: Callable[[Callable[[], None]], object] = (
                loop.call_soon_threadsafe
            )
            contextvars.Context().run(loop.create_task, self._watch())
        else:
            import trio

            self.call_soon = self.call_soon_threadsafe = key.run_sync_soon  # type: ignore[attr-defined]
            trio.lowlevel.spawn_system_task(self._watch, context=contextvars.Context())

    def submit(self, batch: SyncBatch) -> None:
        # On the loop thread. Under load, workers are woken once per loop iteration, not per
        # batch. A lone batch on an idle runner wakes its worker at once instead.
        batch.queued = time.monotonic()
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
        elif not self.watching and self.kick is not None:
            kick, self.kick = self.kick, None
            kick.set()  # no parked worker: the watcher starts one and watches the wait

    async def _watch(self) -> None:
        # Starts workers: one as soon as work waits with none parked, then, every _WAIT
        # seconds, one more while the oldest queued batch has waited longer than _WAIT.
        limiter = current_thread_limiter()
        try:
            async with anyio.create_task_group() as group:
                try:
                    while True:
                        self.kick = self.engine.signal()
                        if not self.pending:
                            await self.kick.wait()
                        self.kick = None
                        self.watching = True
                        while self.pending:
                            stale = time.monotonic() - _WAIT
                            with self.lock:
                                parked = bool(self.idle)
                                waited = bool(self.pending) and self.pending[0].queued < stale
                            if parked:
                                self._flush()
                            elif (
                                self.workers == 0 or waited
                            ) and self.workers < limiter.total_tokens:
                                self.workers += 1
                                group.start_soon(self._worker, limiter)
                            await anyio.sleep(_WAIT)
                        self.watching = False
                finally:  # the loop is ending: release the workers
                    self._close()
        finally:
            _engines.pop(self.engine.key, None)

    def _close(self) -> None:
        with self.lock:
            self.closing = True
            bells, self.idle = self.idle, []
            abandoned = list(self.running.values())
        for bell in bells:
            bell.release()
        for batch in abandoned:
            batch.stopped = True

    async def _worker(self, limiter: anyio.CapacityLimiter) -> None:
        # Holds one token of the thread budget for as long as its thread lives.
        thread_done = self.engine.signal()
        try:
            async with limiter:
                thread = threading.Thread(
                    target=self._work, args=(thread_done,), name="bgtasks-worker", daemon=True
                )
                thread.start()
                try:
                    with anyio.CancelScope(shield=True):
                        await thread_done.wait()
                except BaseException:
                    # The loop is ending (asyncio.Runner cancels even shielded waits). A parked
                    # worker ends at once; one inside a task is abandoned, never joined.
                    self._close()
                    raise
                finally:
                    if not self._busy(thread):  # it is leaving: let it finish (bounded)
                        thread.join(5.0)
        finally:
            self.workers -= 1

    def _busy(self, thread: threading.Thread) -> bool:
        with self.lock:
            return thread.ident in self.running

    def _work(self, thread_done: Signal) -> None:
        try:
            self._drain()
        finally:
            self._call_on_loop(thread_done.set)

    def _claim_for_from_thread(self) -> None:
        # What anyio.to_thread does for its own workers, so that anyio.from_thread.run and
        # run_sync work in sync tasks as they do under Starlette. anyio keeps the token in a
        # private thread-local; no public call sets it for a thread anyio did not start. On
        # trio, anyio then asks trio, which looks in its own private thread-local: it is filled
        # as for an explicit token (calls run in trio's system nursery). Should either library
        # move these, from_thread stops working here (a test pins it); the worker must not.
        try:
            from anyio._core._eventloop import threadlocals

            threadlocals.current_token = self.token
            if self.engine.loop is None:
                from trio._threads import PARENT_TASK_DATA

                PARENT_TASK_DATA.token = self.engine.key  # type: ignore[assignment]
                PARENT_TASK_DATA.abandon_on_cancel = True
        except (ImportError, AttributeError):  # pragma: no cover - a future anyio or trio
            pass

    def _drain(self) -> None:
        self._claim_for_from_thread()
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
                    self.running[me] = batch
            if batch is None:
                if not bell.acquire(timeout=_LINGER):
                    with self.lock:
                        if bell in self.idle:  # nobody rang in time: give the thread back
                            self.idle.remove(bell)
                            return
                    bell.acquire()  # rung just as the wait timed out
                continue
            try:
                batch.run()
            except BaseException:  # a bug of ours; the batch must still come back (rule 5)
                import logging

                logging.getLogger("bgtasks").exception("bgtasks worker failed running a batch")
            with self.lock:
                del self.running[me]
                if self.closing:
                    return  # abandoned: the loop has gone, nobody is waiting
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
            batch.finish(self.engine)
