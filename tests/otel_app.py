"""An app traced by OpenTelemetryMiddleware and BackgroundTasksInstrumentor, for a real server.

Finished spans go to ``spans.jsonl`` in ``BGTASKS_TEST_DIR``, one JSON object per line.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

from helpers import answer_lifespan
from opentelemetry.instrumentation.asgi import OpenTelemetryMiddleware
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter, SpanExportResult

from bgtasks import BackgroundTasksMiddleware, Receive, Response, Scope, Send, get_background_tasks
from bgtasks.otel import BackgroundTasksInstrumentor

DIR = Path(os.environ.get("BGTASKS_TEST_DIR", "."))


class Lines(SpanExporter):
    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        with open(DIR / "spans.jsonl", "a") as file:
            for span in spans:
                record = {
                    "name": span.name,
                    "kind": span.kind.name,
                    "span_id": span.context.span_id if span.context else None,
                    "parent_id": span.parent.span_id if span.parent else None,
                }
                file.write(json.dumps(record) + "\n")
        return SpanExportResult.SUCCESS


provider = TracerProvider()
provider.add_span_processor(SimpleSpanProcessor(Lines()))
BackgroundTasksInstrumentor().instrument(tracer_provider=provider)


def send_welcome(to: str) -> None:
    (DIR / f"{to}.done").write_text("sent")


async def endpoint(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] == "lifespan":
        return await answer_lifespan(receive, send)
    get_background_tasks(scope).add_task(send_welcome, "ada")
    await Response(b"ok")(scope, receive, send)


app = BackgroundTasksMiddleware(
    OpenTelemetryMiddleware(endpoint, tracer_provider=provider), detached=True
)
