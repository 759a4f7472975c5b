"""SQLiteDispatcher: ``enqueue`` to a file on this machine; the web processes are the workers.

Theory of operation. ``enqueue`` checks the call (a registered task, JSON arguments) at once.
When the request succeeds, its calls are written to the file before the client hears of it
(the calls of one loop iteration in one transaction), already held by this process under a
lease; then they run in this process as the request's own background tasks, once its response
is complete, and each attempt writes its outcome (``_attempt``). A lease loop per process
(``_lease``) renews what the process holds and claims what nobody runs: calls of dead
processes, calls whose lease ran out, retries whose wait is over. Every statement lives in
``_journal``. So:

1. A 2xx means the call is in the file. With the default ``synchronous="NORMAL"`` (WAL), a
   committed call survives the death of the process; ``"FULL"`` also survives power loss.
2. At least once: a call runs until an attempt succeeds or the attempts run out, whatever dies
   in between. While its process lives and its loop keeps renewing, no call runs twice.
3. Only registered functions run; the file names a task, and the process looks the name up in
   its own registry.
4. Nothing new to run: Python's ``sqlite3``, no server, no polling delay for new work.

Keep the file on a local disk: SQLite's locking does not hold on network file systems.
"""

from __future__ import annotations

import json
import math
import os
import sqlite3
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar, overload

import anyio
import anyio.to_thread

from .._engine import Work, current_engine
from ..dispatch import Call
from ..tasks import BackgroundTask, BackgroundTasks, Run, is_async_callable, logger
from ._attempt import AsyncAttempt, Spec, SyncAttempt
from ._journal import Journal, Row
from ._lease import Lease, process_owner

__all__ = ["FailedCall", "SQLiteDispatcher"]

F = TypeVar("F", bound=Callable[..., Any])

_SYNCHRONOUS = ("NORMAL", "FULL", "EXTRA")
_MAX_CLAIMED = 100  # claimed calls in flight per process, beyond the requests' own


@dataclass(frozen=True)
class FailedCall:
    """A call whose last attempt failed, as the file keeps it."""

    id: int
    name: str
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    attempts: int
    error: str  # the traceback of the last attempt


def _seconds(value: object, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{what} must be a number of seconds, got {value!r}")
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"{what} must be a positive number of seconds, got {value!r}")
    return float(value)


class SQLiteDispatcher:
    """A ``bgtasks.dispatch.Dispatcher`` whose broker is an SQLite file on this machine.

    ``SQLiteDispatcher(path, *, lease=30.0, poll_interval=1.0, synchronous="NORMAL")``. Every
    process of the machine that serves the app may share the file. Register functions with
    ``@jobs.task``, pass the dispatcher to ``BackgroundTasksMiddleware(app, dispatcher=jobs)``
    and ``enqueue`` them:

    * When: an enqueued call is written before the response of a successful request goes out
      (a 503 names it if it cannot be), then runs in this process once the response is
      complete, in the context of ``enqueue``, after the request's earlier tasks. ``wait_idle``
      and the shutdown drain count it.
    * At least once: a running call holds a lease of ``lease`` seconds, renewed every third of
      it while it runs. If its process dies, another process claims it once the lease is out
      (at once, if the dead process was on this host); so does the next process to start.
      ``poll_interval`` is how often a process looks for such calls and for retries that are
      due.
    * Failures: ``retries=N`` attempts a failing call up to N more times, with exponential
      backoff and jitter; then it is kept as failed (``failed()``, ``retry_failed()``, and
      ``python -m bgtasks.sqlite PATH``).
    * Shutdown: what is still running when the drain gives up stays in the file, named in a
      warning, for the next process.

    A path that cannot be opened and written as an SQLite database raises ValueError here.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        lease: float = 30.0,
        poll_interval: float = 1.0,
        synchronous: str = "NORMAL",
    ) -> None:
        if not isinstance(path, (str, os.PathLike)):
            raise TypeError(f"path must be a file path, got {path!r}")
        self.path = os.fspath(path)
        self.lease = _seconds(lease, "lease")
        self.poll_interval = _seconds(poll_interval, "poll_interval")
        if not isinstance(synchronous, str) or synchronous.upper() not in _SYNCHRONOUS:
            raise ValueError(
                f"synchronous must be one of {', '.join(map(repr, _SYNCHRONOUS))}, got "
                f"{synchronous!r}: a weaker setting could lose calls the client was told were "
                f"queued"
            )
        self.synchronous = synchronous.upper()
        if self.path in ("", ":memory:") or self.path.startswith("file:"):
            raise ValueError(
                f"path must name a file on a local disk, got {self.path!r}: calls in memory "
                f"die with the process; for that, use bgtasks.LocalDispatcher"
            )
        directory = os.path.dirname(os.path.abspath(self.path))
        if not os.path.isdir(directory):
            raise ValueError(
                f"SQLiteDispatcher cannot create {self.path!r}: the directory {directory!r} "
                f"does not exist"
            )
        if os.path.isdir(self.path):
            raise ValueError(
                f"SQLiteDispatcher needs a file path, and {self.path!r} is a directory"
            )
        try:
            self._journal = Journal(self.path, self.synchronous)
        except sqlite3.Error as exc:
            raise ValueError(
                f"SQLiteDispatcher cannot use {self.path!r} as its SQLite file ({exc}); it must "
                f"be an SQLite database (or a new file) that this process can read and write, "
                f"on a local disk"
            ) from exc
        self._specs: dict[str, Spec] = {}
        self._names: dict[Callable[..., Any], str] = {}
        self._written: dict[int, int] = {}  # id(call) -> its row, between send and run_here
        self._work = Work()
        self._running: set[int] = set()  # ids whose attempts run in this process now
        self._lease = Lease(
            self._journal,
            self.lease,
            min(self.poll_interval, self.lease / 3),
            lambda: list(self._specs),
            lambda: _MAX_CLAIMED - len(self._work),
            self._run_claimed,
            self._running,
        )

    def __repr__(self) -> str:
        return f"<SQLiteDispatcher {self.path!r}>"

    # Registration.

    @overload
    def task(
        self,
        func: F,
        /,
        *,
        name: str | None = None,
        retries: int = 0,
        timeout: float | None = None,
        backoff: float = 1.0,
    ) -> F: ...
    @overload
    def task(
        self,
        func: None = None,
        /,
        *,
        name: str | None = None,
        retries: int = 0,
        timeout: float | None = None,
        backoff: float = 1.0,
    ) -> Callable[[F], F]: ...
    def task(
        self,
        func: Callable[..., Any] | None = None,
        /,
        *,
        name: str | None = None,
        retries: int = 0,
        timeout: float | None = None,
        backoff: float = 1.0,
    ) -> Any:
        """Register ``func`` as a task whose calls may be enqueued; return it unchanged.

        ``@jobs.task``, ``@jobs.task(name=..., retries=..., timeout=..., backoff=...)`` or
        ``jobs.task(func, ...)``. ``name`` (default ``module.qualname``) is what the file
        keeps: keep it stable across deploys. ``retries`` more attempts after a failure,
        the first ``backoff`` seconds later, doubling; ``timeout`` seconds per attempt.
        """
        if type(retries) is not int:
            raise TypeError(f"retries must be an int, got {retries!r}")
        if retries < 0:
            raise ValueError(f"retries must be 0 or more, got {retries}")
        if timeout is not None:
            timeout = _seconds(timeout, "timeout")
        if isinstance(backoff, bool) or not isinstance(backoff, (int, float)):
            raise TypeError(f"backoff must be a number of seconds, got {backoff!r}")
        if not (math.isfinite(backoff) and backoff >= 0):
            raise ValueError(f"backoff must be 0 or more seconds, got {backoff!r}")
        if name is not None and (not isinstance(name, str) or not name):
            raise TypeError(f"name must be a non-empty string, got {name!r}")

        def register(func: F) -> F:
            is_async = is_async_callable(func)  # TypeError for what cannot be a task
            task_name = name if name is not None else BackgroundTask(func).name
            known = self._specs.get(task_name)
            if known is not None and known.func is not func:
                raise ValueError(
                    f"the task name {task_name!r} is already registered for {known.func!r}; "
                    f"give one of them another name=..."
                )
            spec = Spec(func, task_name, is_async, retries, timeout, float(backoff))
            self._specs[task_name] = spec
            self._names[func] = task_name
            return func

        if func is None:
            return register
        if not callable(func):
            raise TypeError(
                f"task() registers a function, got {func!r}; use @jobs.task or "
                f"@jobs.task(retries=3)"
            )
        return register(func)

    # The Dispatcher protocol.

    def name_of(self, func: Any) -> str:
        try:
            return self._names[func]
        except (KeyError, TypeError):
            raise TypeError(
                f"enqueue({func!r}): not a task of this SQLiteDispatcher; register it with "
                f"@jobs.task, or run it in process with add_task"
            ) from None

    def check_call(self, func: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        """Refuse, at ``enqueue``, an argument that JSON would not give back as it is."""
        try:
            if json.loads(_encode([args, kwargs])) == [list(args), kwargs]:
                return
        except (TypeError, ValueError):
            pass
        where = [(f"argument {i}", value) for i, value in enumerate(args)]
        where += [(f"keyword argument {key!r}", value) for key, value in kwargs.items()]
        for label, value in where:
            try:
                same = json.loads(_encode(value)) == value
            except (TypeError, ValueError):
                same = False
            if not same:
                raise TypeError(
                    f"enqueue({self._names[func]}): {label} is {value!r}, which JSON does not "
                    f"give back as it is; the file keeps arguments as JSON: pass str, int, "
                    f"float, bool, None, and lists and dicts (with str keys) of them"
                )

    def send(self, calls: Sequence[Call]) -> list[BaseException | None]:
        # In a worker thread: the calls of one loop iteration, in one transaction.
        self._lease.liveness.hold()  # before any row names this process as its owner
        rows = [(call.name, _encode(list(call.args)), _encode(call.kwargs)) for call in calls]
        ids = self._journal.insert_running(rows, process_owner(), time.time() + self.lease)
        for call, call_id in zip(calls, ids, strict=True):
            self._written[id(call)] = call_id
        return [None] * len(calls)

    def run_here(self, call: Call) -> BackgroundTask:
        """The task that runs ``call``, which ``send`` wrote, in this process."""
        call_id = self._written.pop(id(call))
        self._lease.start()  # from now on this process holds a lease to renew
        attempt = self._attempt(self._specs[call.name], call_id, call.args, call.kwargs, 1)
        task = BackgroundTask(attempt)
        task.context = call.context
        return task

    # In process: lifespan and tests.

    def start(self) -> None:
        """Start this process's lease loop on the running event loop, which at once takes
        over the calls of dead processes (``BackgroundTasksMiddleware`` calls it at lifespan
        startup)."""
        self._lease.start()

    async def wait_idle(self) -> None:
        """Return once every call this process claimed from the file has run, and every
        success so far is deleted from the file."""
        await self._work.wait_idle()
        await anyio.to_thread.run_sync(self._journal.flush)

    async def drain(self, timeout: float, reason: str) -> int:
        """Wait up to ``timeout`` for the claimed calls in flight, give up the rest, stop the
        lease loop, and name the calls this process leaves in the file. Return how many
        claimed calls were given up."""
        cancelled = await self._work.drain(timeout, reason)
        self._lease.stop()
        with anyio.move_on_after(timeout):  # a file locked by another process must not hold us
            await anyio.to_thread.run_sync(self._journal.flush, abandon_on_cancel=True)
        left = await anyio.to_thread.run_sync(self._journal.held_by, process_owner())
        if left:
            logger.warning(
                "%d calls stay in %s for the next process to start (or another one sharing the "
                "file, once their lease of %ss is out): [%s]",
                len(left),
                self.path,
                self.lease,
                ", ".join(left),
            )
        return cancelled

    # For operators: sync, quick; from async code, run them in a thread.

    def status(self) -> dict[str, int]:
        """``{"queued": n, "running": n, "failed": n}`` for the whole file."""
        return self._journal.status()

    def failed(self) -> list[FailedCall]:
        """The calls whose last attempt failed, oldest first."""
        return [_failed(row) for row in self._journal.failed()]

    def retry_failed(self) -> int:
        """Queue every failed call again, with its attempts counted afresh; return how many."""
        return self._journal.retry_failed()

    # Inside.

    def _attempt(
        self,
        spec: Spec,
        call_id: int,
        args: Sequence[Any],
        kwargs: dict[str, Any],
        number: int,
    ) -> SyncAttempt | AsyncAttempt:
        kind = SyncAttempt if not spec.is_async and spec.timeout is None else AsyncAttempt
        return kind(
            self._journal,
            process_owner(),
            spec,
            call_id,
            tuple(args),
            kwargs,
            number,
            self._running,
        )

    def _run_claimed(self, rows: list[Row]) -> None:
        # On the loop: each claimed call is a job of its own, so none waits for another.
        engine = current_engine()
        for call_id, name, args, kwargs, number in rows:
            attempt = self._attempt(
                self._specs[name], call_id, json.loads(args), json.loads(kwargs), number
            )
            tasks = BackgroundTasks()
            tasks.add_task(attempt)
            job = Run(tasks)
            self._work.add(job)
            engine.submit(job)


def _encode(value: object) -> str:
    return json.dumps(value, separators=(",", ":"), allow_nan=False)


def _failed(row: Row) -> FailedCall:
    call_id, name, args, kwargs, attempts, error = row
    return FailedCall(
        call_id, name, tuple(json.loads(args)), json.loads(kwargs), attempts, error or ""
    )
