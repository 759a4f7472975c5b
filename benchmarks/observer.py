"""The observer hook's cost on the middleware path: no observer, a no-op one, OpenTelemetry.

The in-process harness's middleware variants (inprocess.py), measured with no observer
registered, with a ``bgtasks.Observer()`` whose methods do nothing, and with
``BackgroundTasksInstrumentor`` on (the OpenTelemetry SDK's TracerProvider and MeterProvider,
no exporter), interleaved within each repeat; median over repeats.

    python benchmarks/observer.py [--repeats 7] [--loops asyncio,trio]
"""

from __future__ import annotations

import argparse
import statistics
from typing import Any

import anyio
from inprocess import middleware_started, sample

import bgtasks

VARIANTS = ["1 async", "1 sync", "mixed 5+5"]
MODES = ["mw attached", "mw detached"]


OBSERVED = ["none", "no-op", "otel"]


def _otel() -> Any:
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.trace import TracerProvider

    from bgtasks.otel import BackgroundTasksInstrumentor

    return BackgroundTasksInstrumentor(), TracerProvider(), MeterProvider()


async def measure(repeats: int) -> dict[tuple[str, str, str], float]:
    samples: dict[tuple[str, str, str], list[float]] = {}
    noop = bgtasks.Observer()
    instrumentor, tracer_provider, meter_provider = _otel()
    async with middleware_started():
        for _ in range(repeats):
            for variant in VARIANTS:
                for mode in MODES:
                    for observed in OBSERVED:
                        if observed == "no-op":
                            bgtasks.add_observer(noop)
                        elif observed == "otel":
                            instrumentor.instrument(
                                tracer_provider=tracer_provider, meter_provider=meter_provider
                            )
                        try:
                            value = await sample(mode, variant)
                        finally:
                            if observed == "no-op":
                                bgtasks.remove_observer(noop)
                            elif observed == "otel":
                                instrumentor.uninstrument()
                        samples.setdefault((variant, mode, observed), []).append(value)
    return {key: statistics.median(values) for key, values in samples.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--loops", default="asyncio,trio")
    args = parser.parse_args()
    print(f"Median of {args.repeats} repeats, µs per ASGI call.\n")
    for loop in args.loops.split(","):
        results = anyio.run(measure, args.repeats, backend=loop)
        print(f"**{loop}**\n")
        print("| variant | path | no observer µs | no-op observer µs (×) | OpenTelemetry µs (×) |")
        print("|---|---|---|---|---|")
        for variant in VARIANTS:
            for mode in MODES:
                none, noop, otel = (results[variant, mode, o] for o in OBSERVED)
                print(
                    f"| {variant} | {mode} | {none:.2f} | {noop:.2f} ({noop / none:.2f}×) "
                    f"| {otel:.2f} ({otel / none:.2f}×) |"
                )
        print(flush=True)


if __name__ == "__main__":
    main()
