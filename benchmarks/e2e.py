"""End-to-end benchmark: uvicorn (httptools, uvloop, 1 worker) under wrk, on 127.0.0.1.

The server is pinned to core 0 and wrk to core 1 where the machine has two cores, so the app,
its event loop and its worker threads share one core, as in ANCHORS.md. Apps are interleaved
within each round; figures are medians over rounds. Every write_log run is checked: the log
must hold at least one line per response wrk counted, so no speed comes from dropped work.
wrk comes from Debian; this script installs it when it is missing.

    python benchmarks/e2e.py [--rounds 3] [--seconds 5] [--connections 32]
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import tempfile
from dataclasses import dataclass
from pathlib import Path

from harness import ensure_wrk, ms, uvicorn, wrk

# (row label, app in benchmarks/apps.py, whether each request appends a log line)
APPS = [
    ("raw ASGI, no task", "raw", False),
    ("Starlette, no task", "starlette_none", False),
    ("bgtasks, no task", "bgtasks_none", False),
    ("floor: raw + write_log inline on the loop", "raw_inline_write_log", True),
    ("Starlette + write_log task", "starlette_write_log", True),
    ("bgtasks `Response` + write_log task", "bgtasks_write_log", True),
    ("bgtasks middleware, attached + write_log", "mw_attached_write_log", True),
    ("bgtasks middleware, detached + write_log", "mw_detached_write_log", True),
    ("Starlette + 1 async no-op task", "starlette_async", False),
    ("bgtasks + 1 async no-op task", "bgtasks_async", False),
    ("Starlette + 1 sync no-op task", "starlette_sync_noop", False),
    ("bgtasks + 1 sync no-op task", "bgtasks_sync_noop", False),
]


@dataclass
class Run:
    rps: float
    p50_ms: float
    p99_ms: float
    responses: int
    log_lines: int


def run_one(
    wrk_binary: str, app: str, seconds: float, connections: int, workdir: Path
) -> Run:
    log = workdir / f"{app}.log"
    log.unlink(missing_ok=True)
    env = {**os.environ, "BGTASKS_BENCH_LOG": str(log)}
    with uvicorn(f"apps:{app}", env, stop_timeout=120) as (_, port):
        output = wrk(wrk_binary, port, seconds, connections)
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", output).group(1))  # type: ignore[union-attr]
    p50 = ms(re.search(r"^\s+50%\s+(\S+)", output, re.M).group(1))  # type: ignore[union-attr]
    p99 = ms(re.search(r"^\s+99%\s+(\S+)", output, re.M).group(1))  # type: ignore[union-attr]
    responses = int(re.search(r"(\d+) requests in", output).group(1))  # type: ignore[union-attr]
    lines = log.read_text().count("\n") if log.exists() else 0
    return Run(rps, p50, p99, responses, lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--only", help="comma-separated app names to run")
    args = parser.parse_args()
    wrk_binary = ensure_wrk()
    apps = [row for row in APPS if not args.only or row[1] in args.only.split(",")]
    runs: dict[str, list[Run]] = {app: [] for _, app, _ in apps}
    with tempfile.TemporaryDirectory() as workdir:
        for _ in range(args.rounds):
            for _, app, logs in apps:
                run = run_one(wrk_binary, app, args.seconds, args.connections, Path(workdir))
                if logs and run.log_lines < run.responses:
                    raise SystemExit(
                        f"{app}: {run.log_lines} log lines < {run.responses} responses"
                    )
                runs[app].append(run)
    median = {
        app: Run(*(statistics.median(getattr(r, f) for r in rs) for f in Run.__dataclass_fields__))
        for app, rs in runs.items()
    }
    raw = median.get("raw")
    floor = median.get("raw_inline_write_log")
    print(
        f"uvicorn --loop uvloop --http httptools, 1 worker on core 0; wrk -t1 -c{args.connections}"
        f" -d{args.seconds:g}s on core 1; medians of {args.rounds} rounds.\n"
    )
    print("| app | requests/s | × raw | × floor | p50 ms | p99 ms | p99 × floor | tasks ran |")
    print("|---|---|---|---|---|---|---|---|")
    for label, app, logs in apps:
        m = median[app]
        vs_raw = f"{m.rps / raw.rps:.2f}" if raw else "–"
        vs_floor = f"{m.rps / floor.rps:.2f}" if floor and logs else "–"
        p99_floor = f"{m.p99_ms / floor.p99_ms:.1f}" if floor and logs else "–"
        ran = (
            f"{min(r.log_lines - r.responses for r in runs[app]):+d} lines vs responses"
            if logs
            else "–"
        )
        print(
            f"| {label} | {m.rps:,.0f} | {vs_raw} | {vs_floor} | {m.p50_ms:.2f} | "
            f"{m.p99_ms:.2f} | {p99_floor} | {ran} |"
        )


if __name__ == "__main__":
    main()
