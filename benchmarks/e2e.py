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
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent

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


def ensure_wrk() -> str:
    found = shutil.which("wrk")
    if found:
        return found
    print("wrk is missing; installing it from Debian", file=sys.stderr)
    apt = [] if os.geteuid() == 0 else ["sudo"]
    subprocess.run([*apt, "apt-get", "update", "-qq"], check=True)
    subprocess.run([*apt, "apt-get", "install", "-y", "-qq", "wrk"], check=True)
    return shutil.which("wrk") or "wrk"


def pinned(core: int, command: list[str]) -> list[str]:
    if (os.cpu_count() or 1) >= 2 and shutil.which("taskset"):
        return ["taskset", "-c", str(core), *command]
    return command


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _ms(text: str) -> float:
    number, unit = re.fullmatch(r"([\d.]+)(us|ms|s)", text).groups()  # type: ignore[union-attr]
    return float(number) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]


def run_one(wrk: str, app: str, seconds: float, connections: int, workdir: Path) -> Run:
    log = workdir / f"{app}.log"
    log.unlink(missing_ok=True)
    port = free_port()
    server = subprocess.Popen(
        pinned(
            0,
            [
                sys.executable,
                "-m",
                "uvicorn",
                f"apps:{app}",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--loop",
                "uvloop",
                "--http",
                "httptools",
                "--workers",
                "1",
                "--no-access-log",
                "--log-level",
                "warning",
            ],
        ),
        cwd=HERE,
        env={**os.environ, "BGTASKS_BENCH_LOG": str(log)},
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline or server.poll() is not None:
                    raise RuntimeError(f"uvicorn did not start {app}") from None
                time.sleep(0.05)
        output = subprocess.run(
            pinned(
                1,
                [
                    wrk,
                    "-t1",
                    f"-c{connections}",
                    f"-d{seconds:g}s",
                    "--latency",
                    f"http://127.0.0.1:{port}/",
                ],
            ),
            capture_output=True,
            text=True,
            check=True,
            timeout=seconds + 60,
        ).stdout
    finally:
        server.send_signal(signal.SIGTERM)  # uvicorn waits for running background tasks
        server.wait(timeout=120)
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", output).group(1))  # type: ignore[union-attr]
    p50 = _ms(re.search(r"^\s+50%\s+(\S+)", output, re.M).group(1))  # type: ignore[union-attr]
    p99 = _ms(re.search(r"^\s+99%\s+(\S+)", output, re.M).group(1))  # type: ignore[union-attr]
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
    wrk = ensure_wrk()
    apps = [row for row in APPS if not args.only or row[1] in args.only.split(",")]
    runs: dict[str, list[Run]] = {app: [] for _, app, _ in apps}
    with tempfile.TemporaryDirectory() as workdir:
        for _ in range(args.rounds):
            for _, app, logs in apps:
                run = run_one(wrk, app, args.seconds, args.connections, Path(workdir))
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
