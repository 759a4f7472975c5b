"""One attempt at one call: run the registered function, then tell the file how it went.

Rules:

1. An attempt is the callable of a ``BackgroundTask``, so it runs on the bgtasks engine with
   every guarantee of a task: a sync function in bgtasks' threads, an async one on the loop,
   in the context of ``enqueue`` (for a call written by this process). It is named by the
   task's registered name.
2. A success is handed to the journal's deleting thread, which deletes the row with the
   other successes of the moment (``Journal.finish_later``). A failure is written before the
   attempt ends: queued again after a backoff while attempts are left, else kept as
   ``failed`` with its traceback. A retry that waits holds no thread and no slot: it is a row
   with a ``run_after``, claimed by the lease loop of whichever process is first.
3. ``timeout``: an async call is cancelled after it; a sync call with a timeout runs in a
   thread of its own (under bgtasks' thread budget) that is abandoned, never joined, when the
   time is up. Either way the attempt failed with TimeoutError.
4. The last failure is raised, so the engine logs it by name with its traceback, as it logs
   any task's; a failure that will be retried is one warning.
5. A cancellation (shutdown's drain) is not an outcome: the row stays ``running`` under this
   process, and is claimed again once the process is gone.
"""

from __future__ import annotations

import random
import time
import traceback
import weakref
from collections.abc import Callable
from typing import Any

import anyio
import anyio.to_thread

from .._engine import current_thread_limiter
from ..tasks import logger
from ._journal import Journal


class Spec:
    """A registered task: the function and how its calls are attempted."""

    __slots__ = ("func", "name", "is_async", "retries", "timeout", "backoff")

    def __init__(
        self,
        func: Callable[..., Any],
        name: str,
        is_async: bool,
        retries: int,
        timeout: float | None,
        backoff: float,
    ) -> None:
        self.func = func
        self.name = name
        self.is_async = is_async
        self.retries = retries
        self.timeout = timeout
        self.backoff = backoff

    def delay(self, attempt: int) -> float:
        """Seconds before the retry that follows failed attempt number ``attempt``: doubling
        from ``backoff``, with jitter between half and all of it, so that retries of calls
        that failed together do not come back together."""
        full = self.backoff * 2 ** (attempt - 1)
        return random.uniform(full / 2, full)


class _Attempt:
    def __init__(
        self,
        journal: Journal,
        owner: str,
        spec: Spec,
        call_id: int,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        number: int,
        running: set[int],
    ) -> None:
        self.journal = journal
        self.owner = owner
        self.spec = spec
        self.call_id = call_id
        self.args = args
        self.kwargs = kwargs
        self.number = number
        # Running here from now until the attempt ends, or, if it never starts (a drain gave
        # it up), until it is dropped: then the lease loop stops renewing it.
        self.running = running
        running.add(call_id)
        weakref.finalize(self, running.discard, call_id)
        # How tasks name their callable (bgtasks.tasks): the registered name, alone.
        self.__module__ = ""
        self.__qualname__ = spec.name

    def __repr__(self) -> str:
        return f"<attempt {self.number} of {self.spec.name} #{self.call_id}>"

    def outcome(self, error: BaseException | None) -> bool:
        """Write how the attempt went; True when ``error`` is final and must be raised."""
        spec, journal = self.spec, self.journal
        if error is None:
            journal.finish_later(self.call_id, self.owner)
            return False
        text = "".join(traceback.format_exception(type(error), error, error.__traceback__))
        if self.number <= spec.retries:
            delay = spec.delay(self.number)
            if not journal.retry_later(self.call_id, self.owner, time.time() + delay, text):
                self._lost()
                return False
            logger.warning(
                "%s failed (attempt %d of %d), retried in %.2fs: %r",
                spec.name,
                self.number,
                spec.retries + 1,
                delay,
                error,
            )
            return False
        if not journal.fail(self.call_id, self.owner, text):
            self._lost()
        return True

    def _lost(self) -> None:
        logger.warning(
            "%s (call #%d) outlived its lease and another process took it over; this "
            "attempt's outcome was not recorded",
            self.spec.name,
            self.call_id,
        )


class SyncAttempt(_Attempt):
    """A sync call with no timeout: runs in the engine's threads, as any sync task."""

    def __call__(self) -> None:
        try:
            self.spec.func(*self.args, **self.kwargs)
        except BaseException as exc:
            if self.outcome(exc):
                raise
        else:
            self.outcome(None)
        finally:
            self.running.discard(self.call_id)


class AsyncAttempt(_Attempt):
    """An async call, or a sync one with a timeout: driven from the loop."""

    async def __call__(self) -> None:
        try:
            await self._attempt()
        finally:
            self.running.discard(self.call_id)

    async def _attempt(self) -> None:
        spec = self.spec
        try:
            if spec.timeout is None:  # no cancel scope: it costs more than a quick task
                await spec.func(*self.args, **self.kwargs)
            else:
                with anyio.fail_after(spec.timeout):
                    if spec.is_async:
                        await spec.func(*self.args, **self.kwargs)
                    else:
                        await anyio.to_thread.run_sync(
                            self._call_sync,
                            abandon_on_cancel=True,
                            limiter=current_thread_limiter(),
                        )
        except Exception as exc:
            error: Exception | None = exc
        else:
            error = None
        # Any other BaseException is a cancellation (rule 5), or KeyboardInterrupt/SystemExit:
        # the row stays as it is.
        if error is None:
            self.journal.finish_later(self.call_id, self.owner)  # no thread hop: rule 6
            return
        limiter = current_thread_limiter()
        with anyio.CancelScope(shield=True):
            final = await anyio.to_thread.run_sync(self.outcome, error, limiter=limiter)
        if final and error is not None:
            raise error

    def _call_sync(self) -> None:
        self.spec.func(*self.args, **self.kwargs)
