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
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from e2e import _ms, ensure_wrk, free_port, pinned

HERE = Path(__file__).resolve().parent
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


def run_one(wrk: str, app: str, seconds: float, env: dict[str, str]) -> tuple[float, float]:
    port = free_port()
    server = subprocess.Popen(
        pinned(
            0,
            [
                sys.executable,
                "-m",
                "uvicorn",
                f"enqueue_apps:{app}",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--loop",
                "uvloop",
                "--http",
                "httptools",
                "--no-access-log",
                "--log-level",
                "warning",
            ],
        ),
        cwd=HERE,
        env=env,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"uvicorn did not start {app}") from None
                time.sleep(0.05)
        output = subprocess.run(
            pinned(
                1, [wrk, "-t1", "-c32", f"-d{seconds:g}s", "--latency", f"http://127.0.0.1:{port}/"]
            ),
            capture_output=True,
            text=True,
            check=True,
            timeout=seconds + 60,
        ).stdout
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=120)
    import re

    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", output).group(1))  # type: ignore[union-attr]
    p99 = _ms(re.search(r"^\s+99%\s+(\S+)", output, re.M).group(1))  # type: ignore[union-attr]
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    if non_2xx:
        raise SystemExit(f"{app}: {non_2xx.group(1)} responses were not 2xx")
    return rps, p99


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=5.0)
    args = parser.parse_args()
    wrk, redis = ensure_wrk(), ensure_redis()
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
                    runs[app].append(run_one(wrk, app, args.seconds, env))
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
