"""Procrastinate: ``ProcrastinateDispatcher(procrastinate_app)``, for ``enqueue`` and
``dispatcher=``.

Procrastinate is imported here only (extra ``asgi-bgtasks[procrastinate]``). ``send`` defers
consecutive calls of one task with ``batch_defer``, one round trip for the batch, in the
contextvars of the first call's ``enqueue``. Procrastinate tasks take keyword arguments only:
``enqueue(task, to="ada")``; positional arguments are refused at ``enqueue``.

The app's connector must support deferring from sync code (``SyncPsycopgConnector`` in the web
process; workers use ``app.with_connector(PsycopgConnector(...))``). The dispatcher opens the
app on its first send. Pass ``pool=psycopg_pool.ConnectionPool(dsn, open=False, timeout=2)``
to bound how long a request waits for a database that is down before its client gets a 503:
Procrastinate's own ``open()`` waits 30 s for the first connection.

Delivery is at least once with Procrastinate's stalled-job recovery (``get_stalled_jobs``
then ``retry_job``, run periodically, as its documentation prescribes): engine tasks must be
idempotent.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any

import procrastinate
import procrastinate.tasks

from .dispatch import Call

__all__ = ["ProcrastinateDispatcher"]


class ProcrastinateDispatcher:
    """A ``bgtasks.dispatch.Dispatcher`` that defers calls as Procrastinate jobs."""

    def __init__(self, app: procrastinate.App, *, pool: Any = None) -> None:
        if not isinstance(app, procrastinate.App):
            raise TypeError(f"ProcrastinateDispatcher needs a procrastinate.App, got {app!r}")
        self.app = app
        self.pool = pool  # a psycopg_pool.ConnectionPool, opened here without waiting
        self._opened = False
        self._lock = threading.Lock()

    def name_of(self, func: Any) -> str:
        if not isinstance(func, procrastinate.tasks.Task):
            raise TypeError(
                f"enqueue with ProcrastinateDispatcher needs a Procrastinate task (a function "
                f"decorated with @app.task), got {func!r}; use add_task to run it here"
            )
        return str(func.name)

    def check_call(self, func: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        if args:
            raise TypeError(
                f"Procrastinate tasks take keyword arguments only: enqueue({func.name}, "
                f"name=value, ...), got positional arguments {args!r}"
            )

    def send(self, calls: Sequence[Call]) -> list[BaseException | None]:
        with self._lock:
            if not self._opened:
                try:
                    if self.pool is not None:
                        self.pool.open(wait=False)  # connects in the background
                    self.app.open(self.pool)
                except Exception as exc:
                    return [exc] * len(calls)
                self._opened = True
        results: list[BaseException | None] = []
        start = 0
        while start < len(calls):  # each run of consecutive calls to one task: one batch
            end = start + 1
            while end < len(calls) and calls[end].func is calls[start].func:
                end += 1
            group = calls[start:end]
            try:
                group[0].context.run(
                    group[0].func.batch_defer, *[dict(call.kwargs) for call in group]
                )
            except Exception as exc:
                results.extend([exc] * len(group))
            else:
                results.extend([None] * len(group))
            start = end
        return results
