"""OpenTelemetry: ``BackgroundTasksInstrumentor().instrument()``, with the usual providers.

``instrument(tracer_provider=..., meter_provider=...)``, ``uninstrument()``. Built on
``bgtasks.Observer``; OpenTelemetry is imported here only (extra ``asgi-bgtasks[otel]``).

* Traces: one INTERNAL span per task run, named ``bgtasks.task <qualname>``, with
  ``code.function.name`` (module and qualname) and ``bgtasks.task.queue_wait`` (seconds from
  ``add_task`` to the start). Its parent is the span current when the task was added, under
  ``opentelemetry-instrumentation-asgi`` or ``-fastapi`` the request's server span, for async
  and sync tasks, attached and detached. The span is current while the task runs, so spans the
  task makes are its children. A failing task's span has status ERROR, the exception recorded,
  and ``error.type``.
* Metrics: histogram ``bgtasks.task.duration`` (s; ``bgtasks.task.name``,
  ``bgtasks.task.outcome`` = ``ok``, ``error`` or ``cancelled``), up-down counter
  ``bgtasks.tasks.pending`` (added and not finished: 0 when idle), counter
  ``bgtasks.tasks.dropped`` (``bgtasks.drop.reason``) for every task that never ran. A task
  cancelled while it ran is not dropped: its duration is recorded as ``cancelled``.
* ``enqueue`` sends each call in the context of its ``enqueue``, so an engine's own
  instrumentation (Celery's) continues the trace into the worker.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Collection
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import metrics, trace
from opentelemetry.instrumentation.instrumentor import BaseInstrumentor  # type: ignore[attr-defined]
from opentelemetry.trace import SpanKind, Status, StatusCode

from ._observe import Observer, add_observer, remove_observer
from .tasks import BackgroundTask

__all__ = ["BackgroundTasksInstrumentor"]

_DROP_REASONS = [  # the bgtasks.drop.reason of each kind of log line that drops a task
    ("shutdown_timeout", "shutdown_timeout"),
    ("grace period", "grace_period"),
    ("run_if", "run_if"),
    ("raised", "app_raised"),
    ("exception", "app_raised"),
    ("without completing", "incomplete_response"),
    ("not sent", "response_not_sent"),
    ("cancelled before it started", "cancelled"),
]


def _drop_reason(reason: str) -> str:
    for marker, kind in _DROP_REASONS:
        if marker in reason:
            return kind
    return "other"


class _Telemetry(Observer):
    def __init__(self, tracer: trace.Tracer, meter: metrics.Meter) -> None:
        self.tracer = tracer
        self.duration = meter.create_histogram(
            "bgtasks.task.duration", unit="s", description="Time a background task ran"
        )
        self.pending = meter.create_up_down_counter(
            "bgtasks.tasks.pending", description="Background tasks added and not yet finished"
        )
        self.dropped_tasks = meter.create_counter(
            "bgtasks.tasks.dropped", description="Background tasks that never ran"
        )
        self.lock = threading.Lock()
        self.added_at: dict[int, float] = {}  # id(task) -> monotonic time of add_task
        # The token is typed `object` by opentelemetry-api < 1.28 and `Token[Context]` after.
        self.running: dict[int, tuple[trace.Span, Any, float]] = {}

    def added(self, task: Any) -> None:
        if isinstance(task, BackgroundTask):
            with self.lock:
                self.added_at[id(task)] = time.monotonic()
            self.pending.add(1)

    def started(self, task: Any) -> None:
        if not isinstance(task, BackgroundTask):
            return
        now = time.monotonic()
        with self.lock:
            added = self.added_at.get(id(task), now)
        qualname = getattr(task.func, "__qualname__", task.name)  # a partial has none
        span = self.tracer.start_span(  # parent: the current span of this, the add-time context
            f"bgtasks.task {qualname}",
            kind=SpanKind.INTERNAL,
            attributes={"code.function.name": task.name, "bgtasks.task.queue_wait": now - added},
        )
        token = otel_context.attach(trace.set_span_in_context(span))
        with self.lock:
            self.running[id(task)] = (span, token, now)

    def finished(self, task: Any, error: BaseException | None, cancelled: bool) -> None:
        if not isinstance(task, BackgroundTask):
            return
        with self.lock:
            entry = self.running.pop(id(task), None)
            known = self.added_at.pop(id(task), None) is not None
        if entry is None:
            return
        span, token, started = entry
        outcome = "cancelled" if cancelled else "error" if error is not None else "ok"
        if error is not None and not cancelled:
            span.record_exception(error)
            span.set_attribute("error.type", type(error).__qualname__)
            span.set_status(Status(StatusCode.ERROR, str(error)))
        span.set_attribute("bgtasks.task.outcome", outcome)
        span.end()
        otel_context.detach(token)
        self.duration.record(
            time.monotonic() - started,
            {"bgtasks.task.name": task.name, "bgtasks.task.outcome": outcome},
        )
        if known:
            self.pending.add(-1)

    def dropped(self, task: Any, reason: str) -> None:
        if not isinstance(task, BackgroundTask):
            return
        with self.lock:
            known = self.added_at.pop(id(task), None) is not None
        if known:
            self.pending.add(-1)
        self.dropped_tasks.add(1, {"bgtasks.drop.reason": _drop_reason(reason)})


class BackgroundTasksInstrumentor(BaseInstrumentor):  # type: ignore[misc]
    """Traces and metrics for every bgtasks task, as every OpenTelemetry instrumentor does:
    ``instrument(tracer_provider=..., meter_provider=...)`` and ``uninstrument()``."""

    _telemetry: _Telemetry | None = None

    def instrumentation_dependencies(self) -> Collection[str]:
        return []  # bgtasks itself is the instrumented library, and it is here

    def _instrument(self, **kwargs: Any) -> None:
        tracer = trace.get_tracer(__name__, tracer_provider=kwargs.get("tracer_provider"))
        meter = metrics.get_meter(__name__, meter_provider=kwargs.get("meter_provider"))
        self._telemetry = _Telemetry(tracer, meter)
        add_observer(self._telemetry)

    def _uninstrument(self, **kwargs: Any) -> None:
        if self._telemetry is not None:
            remove_observer(self._telemetry)
            self._telemetry = None
