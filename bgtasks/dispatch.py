"""Past one process: hand calls to a distributed engine (Celery, Procrastinate, ...).

Rules:

1. A ``Dispatcher`` adapts one engine. ``name_of`` names an engine task (and refuses anything
   that is not one, at ``enqueue`` time), and an optional ``check_call(func, args, kwargs)``
   refuses arguments the engine cannot take, there too; ``send`` sends a batch of calls and
   reports, per call, whether the broker took it. ``send`` runs in one of the engine's worker
   threads: engines' clients are sync, and that works on asyncio and trio alike.
2. Calls that several requests make in one loop iteration go out in one ``send``, so an engine
   with a batch API sends them in one round trip.
3. Each call is sent in the contextvars of its ``enqueue`` (a tracing span, say), so the
   engine's own instrumentation can continue the request's trace.
4. What ``send`` raises counts as a failure of every call in the batch.
5. A dispatcher whose workers are this process may also have ``run_here(call)``: for each call
   ``send`` took, the ``BackgroundTask`` that runs it here. It joins the request's tasks, so it
   runs once the response is complete, counted and drained with them. ``InProcess``
   dispatchers (``wait_idle`` and ``drain``) have work of their own, which the middleware
   waits for and drains; ``start()``, if present, is called at lifespan startup.
"""

from __future__ import annotations

import contextvars
from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

from . import _observe
from ._engine import Engine, Signal, SyncBatch, current_engine

__all__ = ["Call", "Dispatcher", "InProcess"]


class Call:
    """One call handed to an engine: ``func(*args, **kwargs)``, named by the engine."""

    __slots__ = ("func", "args", "kwargs", "name", "context")

    def __init__(
        self, func: Any, args: tuple[Any, ...], kwargs: dict[str, Any], name: str
    ) -> None:
        self.func = func
        self.args = args
        self.kwargs = kwargs
        self.name = name
        self.context = contextvars.copy_context()

    def __repr__(self) -> str:
        return f"<Call {self.name}>"


class Dispatcher(Protocol):
    """An engine adapter: what ``BackgroundTasks.enqueue`` hands its calls to."""

    def name_of(self, func: Any) -> str:
        """The engine's name for task ``func``; TypeError if ``func`` is not one of its tasks."""
        ...

    def send(self, calls: Sequence[Call]) -> Sequence[BaseException | None]:
        """Send ``calls`` to the broker, in order, from a worker thread.

        Return one entry per call: None once the broker has acknowledged it, or the exception
        that refused it.
        """
        ...


@runtime_checkable
class InProcess(Protocol):
    """A dispatcher that runs work in this process, which must be waited for and drained."""

    async def wait_idle(self) -> None:
        """Return once no work of the dispatcher is queued or running in this process."""
        ...

    async def drain(self, timeout: float, reason: str) -> int:
        """Wait up to ``timeout`` for the work in flight, give up the rest naming it with
        ``reason``, and return how many units of work were given up."""
        ...


class _Sending:
    """One loop iteration's calls to one dispatcher, sent together in a worker thread."""

    __slots__ = ("dispatcher", "calls", "waiters", "results")

    def __init__(self, dispatcher: Dispatcher) -> None:
        self.dispatcher = dispatcher
        self.calls: list[Call] = []
        self.waiters: list[Signal] = []  # one per request whose calls are in this batch
        self.results: list[BaseException | None] = []

    # What a worker thread runs: a Call-like object for the engine's SyncBatch.
    @property
    def func(self) -> Any:
        return self._send

    args: tuple[Any, ...] = ()
    kwargs: dict[str, Any] = {}  # noqa: RUF012 - read only, the Call protocol's shape

    @property
    def context(self) -> contextvars.Context:
        return contextvars.Context()

    def _send(self) -> None:
        observed = bool(_observe.observers)
        if observed:
            for call in self.calls:
                call.context.run(_observe.report, "started", call)
        try:
            results = list(self.dispatcher.send(self.calls))
            if len(results) != len(self.calls):
                raise RuntimeError(
                    f"{type(self.dispatcher).__name__}.send returned {len(results)} results "
                    f"for {len(self.calls)} calls"
                )
        except BaseException as exc:  # nothing is known to be sent: every call failed
            results = [exc] * len(self.calls)
        self.results = results
        if observed:
            for call, error in zip(self.calls, results, strict=True):
                call.context.run(_observe.report, "finished", call, error, False)


_outboxes: dict[tuple[Engine, int], _Sending] = {}


async def send_calls(dispatcher: Dispatcher, calls: Sequence[Call]) -> list[BaseException | None]:
    """Send ``calls`` through ``dispatcher``, batched with other requests' calls of this loop
    iteration; return one result per call (None: acknowledged)."""
    engine = current_engine()
    key = (engine, id(dispatcher))
    sending = _outboxes.get(key)
    if sending is None:
        sending = _outboxes[key] = _Sending(dispatcher)

        def flush() -> None:  # next loop iteration: every request of this one has its calls in
            del _outboxes[key]
            batch = SyncBatch([sending], observed=False)
            batch.done = _Delivered(sending.waiters)
            engine.threads.submit(batch)

        engine.threads.call_soon(flush)
    start = len(sending.calls)
    sending.calls.extend(calls)
    signal = engine.signal()
    sending.waiters.append(signal)
    await signal.wait()
    return sending.results[start : start + len(calls)]


class _Delivered(Signal):
    # The batch's "done" hook: on the loop, once the worker has sent the calls, wake every
    # request whose calls were in it.
    __slots__ = ("waiters",)

    def __init__(self, waiters: list[Signal]) -> None:
        self.waiters = waiters

    def set(self) -> None:
        for waiter in self.waiters:
            waiter.set()
