"""Sustained load: a 5 ms sync task on every request, at full rate, then SIGTERM.

uvicorn (uvloop, httptools, 1 worker) on core 0 under ``wrk -t1 -c32`` on core 1 for
``--seconds`` (default 30). Each request adds one sync task that sleeps 5 ms (a stand-in for a
database write) and then appends a line to a log. Recorded per app: server RSS every second,
responses, tasks completed by the time wrk stops and by the time the server has exited, the
time from SIGTERM to exit, and how many tasks the server's log names as never run or
cancelled. Starlette's background tasks run beside the bgtasks middleware in both modes.

    python benchmarks/sustained.py [--seconds 30]
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import tempfile
import time
from pathlib import Path

from harness import ensure_wrk, every_second, uvicorn, wrk

APPS = [
    ("Starlette `BackgroundTask`", "starlette_db_write"),
    ("bgtasks middleware, attached", "mw_attached_db_write"),
    ("bgtasks middleware, detached (max_pending=1000)", "mw_detached_db_write"),
]


def rss_mib(pid: int) -> float:
    text = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"VmRSS:\s+(\d+)", text).group(1)) / 1024  # type: ignore[union-attr]


def lines(path: Path) -> int:
    return path.read_text().count("\n") if path.exists() else 0


def run_one(wrk_binary: str, app: str, seconds: int, workdir: Path) -> dict[str, object]:
    log = workdir / f"{app}.log"
    server_log = workdir / f"{app}.server.log"
    env = {**os.environ, "BGTASKS_BENCH_LOG": str(log)}
    with open(server_log, "wb") as out, uvicorn(f"apps:{app}", env, out) as (server, port):
        samples: list[float] = []
        with every_second(lambda: samples.append(rss_mib(server.pid))):
            output = wrk(wrk_binary, port, seconds)
        done_at_stop = lines(log)
        started = time.monotonic()
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=300)
        exit_seconds = time.monotonic() - started
    responses = int(re.search(r"(\d+) requests in", output).group(1))  # type: ignore[union-attr]
    text = server_log.read_text(errors="replace")
    named = sum(
        len([n for n in part.split(", ") if n])
        for part in re.findall(r"(?:cancelled|never started): \[([^\]]*)\]", text)
    )
    return {
        "responses": responses,
        "done_at_stop": done_at_stop,
        "done_at_exit": lines(log),
        "named": named,
        "exit_seconds": exit_seconds,
        "rss": samples,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=30)
    args = parser.parse_args()
    wrk_binary = ensure_wrk()
    print(
        f"uvicorn (uvloop, httptools) on core 0; wrk -t1 -c32 -d{args.seconds}s on core 1; "
        f"one 5 ms sync task per request; one run each.\n"
    )
    print(
        "| app | responses | tasks done when wrk stopped (per s) | done at exit "
        "| named as not run | lost unnamed | SIGTERM → exit s | RSS MiB at 5 s / 15 s / end |"
    )
    print("|---|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as workdir:
        for label, app in APPS:
            r = run_one(wrk_binary, app, args.seconds, Path(workdir))
            rss: list[float] = r["rss"]  # type: ignore[assignment]
            lost = r["responses"] - r["done_at_exit"] - r["named"]  # type: ignore[operator]
            at = [rss[min(i, len(rss) - 1)] for i in (4, 14, len(rss) - 1)] if rss else []
            print(
                f"| {label} | {r['responses']:,} | {r['done_at_stop']:,} "
                f"({r['done_at_stop'] / args.seconds:,.0f}) | {r['done_at_exit']:,} "  # type: ignore[operator]
                f"| {r['named']:,} | {max(lost, 0):,} | {r['exit_seconds']:.1f} "
                f"| {' / '.join(f'{v:.0f}' for v in at)} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
