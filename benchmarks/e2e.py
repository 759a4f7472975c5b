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

# (row label, app in benchmarks/apps.py, whether each request appends a log line, the app the
# row is compared with: its floor or the incumbent). Tables print in this order.
TABLES: dict[str, list[tuple[str, str, bool, str | None]]] = {
    "write_log, a sync task, against its one-core floor": [
        ("raw ASGI, no task", "raw", False, None),
        ("Starlette, no task", "starlette_none", False, "raw"),
        ("bgtasks, no task", "bgtasks_none", False, "raw"),
        ("floor: raw + write_log inline on the loop", "raw_inline_write_log", True, None),
        ("Starlette + write_log task", "starlette_write_log", True, "raw_inline_write_log"),
        ("bgtasks `Response` + write_log", "bgtasks_write_log", True, "raw_inline_write_log"),
        ("middleware attached + write_log", "mw_attached_write_log", True, "raw_inline_write_log"),
        ("middleware detached + write_log", "mw_detached_write_log", True, "raw_inline_write_log"),
    ],
    "an async task (one checkpoint, then write_log), against Starlette": [
        ("floor: the task awaited inline", "raw_inline_write_log_async", True, None),
        ("Starlette + the task", "starlette_write_log_async", True, "raw_inline_write_log_async"),
        ("bgtasks `Response`", "bgtasks_write_log_async", True, "starlette_write_log_async"),
        ("middleware attached", "mw_attached_write_log_async", True, "starlette_write_log_async"),
        ("middleware detached", "mw_detached_write_log_async", True, "starlette_write_log_async"),
    ],
    "FastAPI, a trivial async endpoint, against FastAPI's own BackgroundTasks": [
        ("FastAPI's own + write_log", "fastapi_own_write_log", True, None),
        ("`bgtasks.fastapi` + write_log", "fastapi_ours_write_log", True, "fastapi_own_write_log"),
        ("middleware + get_background_tasks + write_log", "fastapi_mw_write_log", True,
         "fastapi_own_write_log"),
        ("FastAPI's own + async task", "fastapi_own_write_log_async", True, None),
        ("`bgtasks.fastapi` + async task", "fastapi_ours_write_log_async", True,
         "fastapi_own_write_log_async"),
        ("middleware + get_background_tasks + async task", "fastapi_mw_write_log_async", True,
         "fastapi_own_write_log_async"),
    ],
    "no-op tasks": [
        ("Starlette + 1 async no-op task", "starlette_async", False, "raw"),
        ("bgtasks + 1 async no-op task", "bgtasks_async", False, "starlette_async"),
        ("Starlette + 1 sync no-op task", "starlette_sync_noop", False, "raw"),
        ("bgtasks + 1 sync no-op task", "bgtasks_sync_noop", False, "starlette_sync_noop"),
    ],
}
ROWS = [row for rows in TABLES.values() for row in rows]


@dataclass
class Run:
    rps: float
    p50_ms: float
    p99_ms: float
    responses: int
    log_lines: int  # once the server has exited (drained)
    done_under_load: int  # log lines when wrk stopped: detached work counts only if done by then

    def rate(self, seconds: float, logs: bool) -> float:
        """Requests/s, or for an app that logs, the tasks done per second while the load ran,
        if fewer (detached work that was still queued when the load stopped does not count)."""
        if not logs:
            return self.rps
        return min(self.rps, self.done_under_load / seconds)


def run_one(
    wrk_binary: str, app: str, seconds: float, connections: int, workdir: Path
) -> Run:
    log = workdir / f"{app}.log"
    log.unlink(missing_ok=True)
    env = {**os.environ, "BGTASKS_BENCH_LOG": str(log)}
    with uvicorn(f"apps:{app}", env, stop_timeout=120) as (_, port):
        output = wrk(wrk_binary, port, seconds, connections)
        done = log.read_text().count("\n") if log.exists() else 0
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", output).group(1))  # type: ignore[union-attr]
    p50 = ms(re.search(r"^\s+50%\s+(\S+)", output, re.M).group(1))  # type: ignore[union-attr]
    p99 = ms(re.search(r"^\s+99%\s+(\S+)", output, re.M).group(1))  # type: ignore[union-attr]
    responses = int(re.search(r"(\d+) requests in", output).group(1))  # type: ignore[union-attr]
    lines = log.read_text().count("\n") if log.exists() else 0
    return Run(rps, p50, p99, responses, lines, done)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--only", help="comma-separated app names to run")
    args = parser.parse_args()
    wrk_binary = ensure_wrk()
    only = set(args.only.split(",")) if args.only else None
    apps = [row for row in ROWS if only is None or row[1] in only]
    runs: dict[str, list[Run]] = {app: [] for _, app, _, _ in apps}
    with tempfile.TemporaryDirectory() as workdir:
        for _ in range(args.rounds):
            for _, app, logs, _ in apps:
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
    logs_of = {app: logs for _, app, logs, _ in apps}
    rate = {app: median[app].rate(args.seconds, logs_of[app]) for app in median}
    print(
        f"uvicorn --loop uvloop --http httptools, 1 worker on core 0; wrk -t1 -c{args.connections}"
        f" -d{args.seconds:g}s on core 1; medians of {args.rounds} rounds. 'rate' is requests/s,"
        f" or for a row that logs, the tasks done per second while the load ran if fewer."
    )
    for title, rows in TABLES.items():
        rows = [row for row in rows if row[1] in median]
        if not rows:
            continue
        print(f"\n**{title}**\n")
        print("| app | rate | × compared | p50 ms | p99 ms | p99 × compared | tasks ran |")
        print("|---|---|---|---|---|---|---|")
        for label, app, logs, versus in rows:
            m = median[app]
            known = versus is not None and versus in median
            ratio = f"{rate[app] / rate[versus]:.2f} ({versus})" if known else "–"
            p99 = f"{m.p99_ms / median[versus].p99_ms:.1f}" if known else "–"
            ran = (
                f"{min(r.log_lines - r.responses for r in runs[app]):+d} lines vs responses; "
                f"{min(r.done_under_load for r in runs[app]) / m.responses:.2f} done under load"
                if logs
                else "–"
            )
            print(
                f"| {label} | {rate[app]:,.0f} | {ratio} | {m.p50_ms:.2f} | {m.p99_ms:.2f} | "
                f"{p99} | {ran} |"
            )


if __name__ == "__main__":
    main()
