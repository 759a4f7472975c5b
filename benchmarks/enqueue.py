"""enqueue through uvicorn: one call per request to a durable SQLite file or to Celery, beside
the same work as an in-process task, with a sync task (``write_log``) and an async one.

In one run, interleaved within each round: the middleware (attached) with one in-process task;
``enqueue`` to ``SQLiteDispatcher`` (written before the response, run in process after it);
``enqueue`` to ``CeleryDispatcher`` over a real Redis; and a handler that calls Celery's
``.delay()`` itself. uvicorn (uvloop, httptools, 1 worker) on core 0, wrk on core 1,
redis-server unpinned; medians of rounds. A row whose task runs here counts the tasks done
while the load ran (log lines), if fewer than the responses; each SQLite run must leave its
file empty once the server has exited. Celery's rows only publish: no worker runs.
redis-server and wrk come from Debian and are installed when missing.

    python benchmarks/enqueue.py [--rounds 3] [--seconds 5]
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import sqlite3
import statistics
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from harness import ensure_wrk, free_port, ms, uvicorn, wrk

# (label, app in enqueue_apps.py, whether its task runs in the server and logs a line, the app
# it is compared with).
APPS = [
    ("in process: middleware + `write_log` task", "in_process_write_log", True, None),
    ("SQLite: middleware + `enqueue(write_log)`", "sqlite_write_log", True, "in_process_write_log"),
    ("in process: middleware + async task", "in_process_write_log_async", True, None),
    (
        "SQLite: middleware + `enqueue(async task)`",
        "sqlite_write_log_async",
        True,
        "in_process_write_log_async",
    ),
    ("Celery: middleware + `enqueue` (CeleryDispatcher)", "enqueue", False, "delay_in_handler"),
    ("Celery: handler calls `.delay()` itself", "delay_in_handler", False, None),
]


@dataclass
class Run:
    rps: float
    p99: float
    done_per_s: float  # tasks done per second while the load ran; rps for publish-only rows


def ensure_redis() -> str:
    found = shutil.which("redis-server")
    if found is None:
        apt = [] if os.geteuid() == 0 else ["sudo"]
        subprocess.run([*apt, "apt-get", "install", "-y", "-qq", "redis-server"], check=True)
        found = shutil.which("redis-server")
    assert found is not None
    return found


def run_one(
    wrk_binary: str, app: str, logs: bool, seconds: float, env: dict[str, str], workdir: Path
) -> Run:
    log, database = workdir / f"{app}.log", workdir / f"{app}.sqlite3"
    for path in (log, database, Path(f"{database}-wal"), Path(f"{database}-shm")):
        path.unlink(missing_ok=True)
    env = {**env, "BGTASKS_BENCH_LOG": str(log), "BGTASKS_BENCH_SQLITE": str(database)}
    with uvicorn(f"enqueue_apps:{app}", env, stop_timeout=120) as (_, port):
        output = wrk(wrk_binary, port, seconds)
        done = log.read_text().count("\n") if log.exists() else 0
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", output).group(1))  # type: ignore[union-attr]
    p99 = ms(re.search(r"^\s+99%\s+(\S+)", output, re.M).group(1))  # type: ignore[union-attr]
    responses = int(re.search(r"(\d+) requests in", output).group(1))  # type: ignore[union-attr]
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    if non_2xx:
        raise SystemExit(f"{app}: {non_2xx.group(1)} responses were not 2xx")
    if logs:
        lines = log.read_text().count("\n")
        if lines < responses:
            raise SystemExit(f"{app}: {lines} tasks ran for {responses} responses")
    if database.exists():
        with sqlite3.connect(database) as connection:
            left = connection.execute("SELECT count(*) FROM bgtasks_calls").fetchone()[0]
        if left:
            raise SystemExit(f"{app}: {left} calls left in the file after the server exited")
    return Run(rps, p99, min(rps, done / seconds) if logs else rps)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=5.0)
    args = parser.parse_args()
    wrk_binary, redis = ensure_wrk(), ensure_redis()
    port = free_port()
    with tempfile.TemporaryDirectory(dir=Path(__file__).parent) as workdir:
        broker = subprocess.Popen(
            [redis, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", workdir],
            stdout=subprocess.DEVNULL,
        )  # fmt: skip
        try:
            time.sleep(0.5)
            env = {**os.environ, "BGTASKS_BROKER_URL": f"redis://127.0.0.1:{port}/0"}
            runs: dict[str, list[Run]] = {app: [] for _, app, _, _ in APPS}
            for _ in range(args.rounds):
                for _, app, logs, _ in APPS:
                    run = run_one(wrk_binary, app, logs, args.seconds, env, Path(workdir))
                    runs[app].append(run)
        finally:
            broker.terminate()
            broker.wait(10)
    print(
        f"uvicorn (uvloop, httptools) on core 0; wrk -t1 -c32 -d{args.seconds:g}s on core 1; "
        f"Redis on 127.0.0.1; SQLite file on the local disk, synchronous=NORMAL; medians of "
        f"{args.rounds} rounds; every response was 2xx, every task ran, every file was left "
        f"empty.\n"
    )
    print("| app | requests/s | tasks done/s under load | × its comparison | p99 ms | p99 × |")
    print("|---|---|---|---|---|---|")
    medians = {
        app: (
            statistics.median(r.rps for r in runs[app]),
            statistics.median(r.done_per_s for r in runs[app]),
            statistics.median(r.p99 for r in runs[app]),
        )
        for _, app, _, _ in APPS
    }
    for label, app, logs, against in APPS:
        rps, done, p99 = medians[app]
        ratio = p99_ratio = "–"
        if against is not None:
            ratio = f"{done / medians[against][1]:.2f}"
            p99_ratio = f"{p99 / medians[against][2]:.2f}"
        done_text = f"{done:,.0f}" if logs else "– (publish only)"
        print(f"| {label} | {rps:,.0f} | {done_text} | {ratio} | {p99:.2f} | {p99_ratio} |")
    sqlite_sync = medians["sqlite_write_log"][0]
    print(
        f"\nSQLite `enqueue(write_log)` against Celery's `.delay()` in the handler: "
        f"{sqlite_sync / medians['delay_in_handler'][0]:.2f}× the requests/s."
    )


if __name__ == "__main__":
    main()
