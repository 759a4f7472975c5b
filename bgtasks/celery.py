"""Celery: ``CeleryDispatcher(celery_app)``, for ``enqueue`` and ``dispatcher=``.

Celery is imported here only. ``send`` publishes each call with ``apply_async`` in the
contextvars of its ``enqueue``, so Celery's own instrumentation continues the request's trace.
Celery has no batch publish: a batch is published call by call, over one connection from the
app's pool. Once the broker is unreachable (kombu's OperationalError), the rest of the batch is
refused with the same error at once instead of waiting out the retry policy for each call.

Delivery is at least once only with these Celery settings, which the README explains:
``task_acks_late=True`` and ``task_reject_on_worker_lost=True``, and with Redis, in
``broker_transport_options``, a ``visibility_timeout`` short enough for your recovery target
and low ``unacked_restore_interval`` and ``unacked_restore_throttle`` (kombu's sweep period;
before kombu 5.7, a sweep every 100 s and one when a worker starts).
Engine tasks must therefore be idempotent. With Redis, a worker killed after kombu has popped a
message and before it has recorded it as unacknowledged loses that message: a gap of kombu's
transport that no setting closes.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import celery
import kombu.exceptions

from .dispatch import Call

__all__ = ["CeleryDispatcher"]


class CeleryDispatcher:
    """A ``bgtasks.dispatch.Dispatcher`` that publishes calls as Celery tasks.

    ``options`` go to every ``apply_async`` (``queue="emails"``, ``priority=...``).
    ``enqueue`` accepts only tasks of ``app`` (decorated with ``@app.task``).
    """

    def __init__(self, app: celery.Celery, **options: Any) -> None:
        if not isinstance(app, celery.Celery):
            raise TypeError(f"CeleryDispatcher needs a celery.Celery app, got {app!r}")
        self.app = app
        self.options = options

    def name_of(self, func: Any) -> str:
        if not isinstance(func, celery.Task):
            raise TypeError(
                f"enqueue with CeleryDispatcher needs a Celery task (a function decorated with "
                f"@app.task), got {func!r}; use add_task to run a plain function here"
            )
        return str(func.name)

    def send(self, calls: Sequence[Call]) -> list[BaseException | None]:
        results: list[BaseException | None] = []
        down: BaseException | None = None
        for call in calls:
            if down is not None:
                results.append(down)
                continue
            try:
                call.context.run(call.func.apply_async, call.args, call.kwargs, **self.options)
            except kombu.exceptions.OperationalError as exc:
                down = exc
                results.append(exc)
            except Exception as exc:
                results.append(exc)
            else:
                results.append(None)
        return results
