"""Sustained load on SQLiteDispatcher: RSS and the file's size over time, every call done.

uvicorn (uvloop, httptools, 1 worker) on core 0 under ``wrk -t1 -c32`` on core 1 for
``--seconds`` (default 30); each request enqueues one call (``write_log``, sync, or the async
task) to a fresh file. Sampled every second: the server's RSS and the size of the file with
its write-ahead log. Then SIGTERM; recorded: responses, calls done (log lines) when wrk stopped
and at exit, rows left in the file, and the time from SIGTERM to exit.

    python benchmarks/sqlite_sustained.py [--seconds 30]
"""

from __future__ import annotations

import argparse
import os
import signal
import sqlite3
import tempfile
import time
from pathlib import Path

from harness import ensure_wrk, every_second, uvicorn, wrk
from sustained import lines, rss_mib

APPS = [
    ("SQLite `enqueue(write_log)`", "sqlite_write_log"),
    ("SQLite `enqueue(async task)`", "sqlite_write_log_async"),
]


def file_kib(database: Path) -> float:
    parts = [database, Path(f"{database}-wal")]
    return sum(part.stat().st_size for part in parts if part.exists()) / 1024


def run_one(wrk_binary: str, app: str, seconds: int, workdir: Path) -> dict[str, object]:
    log, database = workdir / f"{app}.log", workdir / f"{app}.sqlite3"
    env = {**os.environ, "BGTASKS_BENCH_LOG": str(log), "BGTASKS_BENCH_SQLITE": str(database)}
    with uvicorn(f"enqueue_apps:{app}", env) as (server, port):
        rss: list[float] = []
        size: list[float] = []

        def sample() -> None:
            rss.append(rss_mib(server.pid))
            size.append(file_kib(database))

        with every_second(sample):
            output = wrk(wrk_binary, port, seconds)
        done_at_stop = lines(log)
        started = time.monotonic()
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=300)
        exit_seconds = time.monotonic() - started
    with sqlite3.connect(database) as connection:
        left = connection.execute("SELECT count(*) FROM bgtasks_calls").fetchone()[0]
    responses = int(output.split(" requests in")[0].split()[-1])
    return {
        "responses": responses,
        "done_at_stop": done_at_stop,
        "done_at_exit": lines(log),
        "left": left,
        "exit_seconds": exit_seconds,
        "rss": rss,
        "size": size,
    }


def at(samples: list[float]) -> str:
    picks = [samples[min(i, len(samples) - 1)] for i in (4, 14, len(samples) - 1)]
    return " / ".join(f"{value:,.0f}" for value in picks) if samples else "–"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=30)
    args = parser.parse_args()
    wrk_binary = ensure_wrk()
    print(
        f"uvicorn (uvloop, httptools) on core 0; wrk -t1 -c32 -d{args.seconds}s on core 1; one "
        f"enqueued call per request, synchronous=NORMAL; one run each.\n"
    )
    print(
        "| app | responses | calls done when wrk stopped (per s) | done at exit | rows left "
        "| SIGTERM → exit s | RSS MiB at 5 s / 15 s / end | file KiB at 5 s / 15 s / end |"
    )
    print("|---|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory(dir=Path(__file__).parent) as workdir:
        for label, app in APPS:
            r = run_one(wrk_binary, app, args.seconds, Path(workdir))
            print(
                f"| {label} | {r['responses']:,} | {r['done_at_stop']:,} "
                f"({r['done_at_stop'] / args.seconds:,.0f}) | {r['done_at_exit']:,} "  # type: ignore[operator]
                f"| {r['left']} | {r['exit_seconds']:.1f} | {at(r['rss'])} "  # type: ignore[arg-type]
                f"| {at(r['size'])} |",  # type: ignore[arg-type]
                flush=True,
            )


if __name__ == "__main__":
    main()
