"""What the end-to-end benchmarks share: uvicorn on core 0, wrk on core 1, both on 127.0.0.1.

The server is pinned to core 0 and wrk to core 1 where the machine has two cores, so the app,
its event loop and its worker threads share one core, as in ANCHORS.md. wrk comes from Debian
and is installed when missing. The server is stopped by PID: SIGTERM, then SIGKILL if it has not
exited in time.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

HERE = Path(__file__).resolve().parent


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


def ms(text: str) -> float:
    """A wrk duration ("812.00us", "1.20ms", "2.01s") in milliseconds."""
    number, unit = re.fullmatch(r"([\d.]+)(us|ms|s)", text).groups()  # type: ignore[union-attr]
    return float(number) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]


@contextmanager
def uvicorn(
    app: str, env: dict[str, str], output: IO[bytes] | None = None, stop_timeout: float = 300
) -> Iterator[tuple[subprocess.Popen[bytes], int]]:
    """Serve ``app`` (``module:attribute`` in benchmarks/) on core 0; yield (process, port).

    On leaving, the server gets SIGTERM (uvicorn waits for running background work) unless the
    caller has stopped it already, and SIGKILL after ``stop_timeout`` seconds.
    """
    port = free_port()
    command = [
        sys.executable, "-m", "uvicorn", app, "--host", "127.0.0.1", "--port", str(port),
        "--loop", "uvloop", "--http", "httptools", "--workers", "1", "--no-access-log",
        "--log-level", "warning",
    ]  # fmt: skip
    server = subprocess.Popen(
        pinned(0, command), cwd=HERE, env=env, stdout=output, stderr=subprocess.STDOUT
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
        yield server, port
    finally:
        if server.poll() is None:
            server.send_signal(signal.SIGTERM)
        try:
            server.wait(timeout=stop_timeout)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


def wrk(binary: str, port: int, seconds: float, connections: int = 32) -> str:
    """wrk's report of ``seconds`` of load on core 1, with the latency distribution."""
    command = [
        binary, "-t1", f"-c{connections}", f"-d{seconds:g}s", "--latency",
        f"http://127.0.0.1:{port}/",
    ]  # fmt: skip
    return subprocess.run(
        pinned(1, command), capture_output=True, text=True, check=True, timeout=seconds + 60
    ).stdout


@contextmanager
def every_second(sample: Callable[[], None]) -> Iterator[None]:
    """Call ``sample`` once a second, in a thread of its own, until the block ends."""
    stop = threading.Event()

    def run() -> None:
        while not stop.wait(1.0):
            sample()

    sampler = threading.Thread(target=run, daemon=True)
    sampler.start()
    try:
        yield
    finally:
        stop.set()
        sampler.join()
