"""bgtasks.otel with the real OpenTelemetry SDK (in-memory span and metric readers) and the real
OpenTelemetryMiddleware around a real app, on asyncio and trio."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from helpers import Lifespan, Recorder, answer_lifespan, http_scope
from opentelemetry.instrumentation.asgi import OpenTelemetryMiddleware
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from bgtasks import BackgroundTasksMiddleware, Response, get_background_tasks
from bgtasks.otel import BackgroundTasksInstrumentor


class Telemetry:
    def __init__(self) -> None:
        self.spans = InMemorySpanExporter()
        self.tracer_provider = TracerProvider()
        self.tracer_provider.add_span_processor(SimpleSpanProcessor(self.spans))
        self.metrics = InMemoryMetricReader()
        self.meter_provider = MeterProvider(metric_readers=[self.metrics])

    def finished(self) -> list[ReadableSpan]:
        return list(self.spans.get_finished_spans())

    def task_span(self, qualname_part: str) -> ReadableSpan:
        [span] = [
            s
            for s in self.finished()
            if s.name.startswith("bgtasks.task") and qualname_part in s.name
        ]
        return span

    def points(self, name: str) -> list[Any]:
        data = self.metrics.get_metrics_data()
        assert data is not None
        return [
            point
            for resource in data.resource_metrics
            for scope in resource.scope_metrics
            for metric in scope.metrics
            if metric.name == name
            for point in metric.data.data_points
        ]


@pytest.fixture
def telemetry() -> Iterator[Telemetry]:
    t = Telemetry()
    instrumentor = BackgroundTasksInstrumentor()
    instrumentor.instrument(tracer_provider=t.tracer_provider, meter_provider=t.meter_provider)
    try:
        yield t
    finally:
        instrumentor.uninstrument()


async def write_async(log: list[str]) -> None:
    log.append("async")


def write_sync(log: list[str]) -> None:
    log.append("sync")


def fails() -> None:
    raise ValueError("smtp down")


def traced_app(telemetry: Telemetry, detached: bool) -> Any:
    async def endpoint(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            return await answer_lifespan(receive, send)
        tasks = get_background_tasks(scope)
        tasks.add_task(write_async, [])
        tasks.add_task(write_sync, [])
        tasks.add_task(fails)
        await Response(b"ok")(scope, receive, send)

    traced = OpenTelemetryMiddleware(endpoint, tracer_provider=telemetry.tracer_provider)
    return BackgroundTasksMiddleware(traced, detached=detached)


async def receive() -> dict[str, Any]:
    return {"type": "http.request", "body": b"", "more_body": False}


@pytest.mark.parametrize("detached", [False, True])
async def test_each_task_is_a_child_span_of_the_request_that_added_it(
    telemetry: Telemetry, detached: bool
) -> None:
    app = traced_app(telemetry, detached)
    async with Lifespan(app).running() as lifespan:
        await app(http_scope(path="/signup"), receive, Recorder())
        await app.wait_idle()
        assert await lifespan.step("shutdown") == "lifespan.shutdown.complete"
    [server] = [s for s in telemetry.finished() if s.kind == SpanKind.SERVER]
    for part in ("write_async", "write_sync", "fails"):
        span = telemetry.task_span(part)
        assert span.kind == SpanKind.INTERNAL
        assert span.parent is not None and span.parent.span_id == server.context.span_id
        assert span.context.trace_id == server.context.trace_id
        assert str(span.attributes["code.function.name"]).endswith(part)
        assert float(span.attributes["bgtasks.task.queue_wait"]) >= 0  # type: ignore[arg-type]
    failed = telemetry.task_span("fails")
    assert failed.status.status_code == StatusCode.ERROR
    assert failed.attributes["error.type"] == "ValueError"
    assert [e.name for e in failed.events] == ["exception"]
    assert telemetry.task_span("write_sync").status.status_code == StatusCode.UNSET


async def test_metrics_count_durations_by_outcome_pending_and_drops(telemetry: Telemetry) -> None:
    app = traced_app(telemetry, detached=False)
    await app(http_scope(), receive, Recorder())

    async def failing_request(scope: dict[str, Any], receive: Any, send: Any) -> None:
        get_background_tasks(scope).add_task(write_sync, [])
        await send({"type": "http.response.start", "status": 503, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    await BackgroundTasksMiddleware(failing_request)(http_scope(), receive, Recorder())
    outcomes = {
        (p.attributes["bgtasks.task.name"].rsplit(".", 1)[-1], p.attributes["bgtasks.task.outcome"])
        for p in telemetry.points("bgtasks.task.duration")
    }
    assert outcomes == {("write_async", "ok"), ("write_sync", "ok"), ("fails", "error")}
    [pending] = telemetry.points("bgtasks.tasks.pending")
    assert pending.value == 0  # idle
    [dropped] = telemetry.points("bgtasks.tasks.dropped")
    assert dropped.value == 1 and dropped.attributes == {"bgtasks.drop.reason": "run_if"}


async def test_uninstrument_stops_the_spans() -> None:
    t = Telemetry()
    instrumentor = BackgroundTasksInstrumentor()
    instrumentor.instrument(tracer_provider=t.tracer_provider, meter_provider=t.meter_provider)
    instrumentor.uninstrument()
    await traced_app(t, detached=False)(http_scope(), receive, Recorder())
    assert [s for s in t.finished() if s.name.startswith("bgtasks.task")] == []


def test_task_span_joins_the_request_trace_under_a_real_server(tmp_path: Any) -> None:
    import json

    from servers import serve, wait_for

    with serve("uvicorn", "otel_app:app", tmp_path) as running, running.connect() as connection:
        assert connection.get("/signup")[0] == 200
        wait_for((tmp_path / "ada.done").exists, "the task")
        spans_file = tmp_path / "spans.jsonl"

        def task_span_exported() -> bool:
            return spans_file.exists() and "bgtasks.task" in spans_file.read_text()

        wait_for(task_span_exported, "the task's span")
    spans = [json.loads(line) for line in spans_file.read_text().splitlines()]
    [server] = [s for s in spans if s["kind"] == "SERVER"]
    [task] = [s for s in spans if s["name"].startswith("bgtasks.task")]
    assert "send_welcome" in task["name"]
    assert task["parent_id"] == server["span_id"]


async def test_enqueued_calls_carry_the_request_span_to_the_dispatcher(
    telemetry: Telemetry,
) -> None:
    from collections.abc import Sequence

    from opentelemetry import trace

    from bgtasks.dispatch import Call
    from bgtasks.testing import RecordingDispatcher

    seen: list[int] = []

    class Tracing(RecordingDispatcher):
        def send(self, calls: Sequence[Call]) -> list[BaseException | None]:
            for call in calls:  # as CeleryDispatcher publishes: in the call's own context
                span = call.context.run(trace.get_current_span)
                seen.append(span.get_span_context().span_id)
            return super().send(calls)

    async def endpoint(scope: dict[str, Any], receive: Any, send: Any) -> None:
        get_background_tasks(scope).enqueue(write_sync, [])
        await Response(b"ok")(scope, receive, send)

    traced = OpenTelemetryMiddleware(endpoint, tracer_provider=telemetry.tracer_provider)
    await BackgroundTasksMiddleware(traced, dispatcher=Tracing())(http_scope(), receive, Recorder())
    [server] = [s for s in telemetry.finished() if s.kind == SpanKind.SERVER]
    assert seen == [server.context.span_id]


async def test_spans_through_httpx_in_process(telemetry: Telemetry) -> None:
    import httpx

    app = traced_app(telemetry, detached=False)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
        assert (await client.get("/signup")).status_code == 200
    [server] = [s for s in telemetry.finished() if s.kind == SpanKind.SERVER]
    span = telemetry.task_span("write_sync")
    assert span.parent is not None and span.parent.span_id == server.context.span_id


async def test_task_cancelled_while_running_is_a_cancelled_duration_not_a_drop(
    telemetry: Telemetry,
) -> None:
    import anyio

    from bgtasks import BackgroundTasks

    async def hangs() -> None:
        await anyio.sleep_forever()

    tasks = BackgroundTasks()
    tasks.add_task(hangs)
    with anyio.move_on_after(0.05):
        await tasks()
    [point] = telemetry.points("bgtasks.task.duration")
    assert point.attributes["bgtasks.task.outcome"] == "cancelled"
    assert telemetry.points("bgtasks.tasks.dropped") == []
    [pending] = telemetry.points("bgtasks.tasks.pending")
    assert pending.value == 0
