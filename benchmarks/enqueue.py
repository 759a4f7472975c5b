"""enqueue through uvicorn: one Celery call per request over a real Redis broker.

Beside it, in the same run: the same request with one in-process ``write_log`` task (the
middleware, attached), and a handler that calls Celery's ``.delay()`` itself on the event loop.
uvicorn (uvloop, httptools, 1 worker) on core 0, wrk on core 1, redis-server unpinned; medians
of rounds. redis-server comes from Debian and is installed when missing.

    python benchmarks/enqueue.py [--rounds 3] [--seconds 5]
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import subprocess
import tempfile
import time

from harness import ensure_wrk, free_port, ms, uvicorn, wrk

APPS = [
    ("middleware + 1 in-process `write_log` task", "in_process_write_log"),
    ("middleware + 1 `enqueue` (CeleryDispatcher)", "enqueue"),
    ("handler calls `.delay()` itself", "delay_in_handler"),
]


def ensure_redis() -> str:
    found = shutil.which("redis-server")
    if found is None:
        apt = [] if os.geteuid() == 0 else ["sudo"]
        subprocess.run([*apt, "apt-get", "install", "-y", "-qq", "redis-server"], check=True)
        found = shutil.which("redis-server")
    assert found is not None
    return found


def run_one(
    wrk_binary: str, app: str, seconds: float, env: dict[str, str]
) -> tuple[float, float]:
    with uvicorn(f"enqueue_apps:{app}", env, stop_timeout=120) as (_, port):
        output = wrk(wrk_binary, port, seconds)
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", output).group(1))  # type: ignore[union-attr]
    p99 = ms(re.search(r"^\s+99%\s+(\S+)", output, re.M).group(1))  # type: ignore[union-attr]
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    if non_2xx:
        raise SystemExit(f"{app}: {non_2xx.group(1)} responses were not 2xx")
    return rps, p99


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=5.0)
    args = parser.parse_args()
    wrk_binary, redis = ensure_wrk(), ensure_redis()
    port = free_port()
    with tempfile.TemporaryDirectory() as workdir:
        broker = subprocess.Popen(
            [
                redis,
                "--port",
                str(port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                workdir,
            ],
            stdout=subprocess.DEVNULL,
        )
        try:
            time.sleep(0.5)
            env = {
                **os.environ,
                "BGTASKS_BROKER_URL": f"redis://127.0.0.1:{port}/0",
                "BGTASKS_BENCH_LOG": os.devnull,
            }
            runs: dict[str, list[tuple[float, float]]] = {app: [] for _, app in APPS}
            for _ in range(args.rounds):
                for _, app in APPS:
                    runs[app].append(run_one(wrk_binary, app, args.seconds, env))
        finally:
            broker.terminate()
            broker.wait(10)
    base = statistics.median(r for r, _ in runs["in_process_write_log"])
    print(
        f"uvicorn (uvloop, httptools) on core 0; wrk -t1 -c32 -d{args.seconds:g}s on core 1; "
        f"Redis on 127.0.0.1; medians of {args.rounds} rounds; every response was 2xx.\n"
    )
    print("| app | requests/s | × in-process task | p99 ms |")
    print("|---|---|---|---|")
    for label, app in APPS:
        rps = statistics.median(r for r, _ in runs[app])
        p99 = statistics.median(p for _, p in runs[app])
        print(f"| {label} | {rps:,.0f} | {rps / base:.2f} | {p99:.2f} |")


if __name__ == "__main__":
    main()
