"""Start real ASGI servers on 127.0.0.1 and talk HTTP/1.1 to them over raw sockets.

Every server runs as its own process group with a bounded start, and is stopped (SIGTERM,
then SIGKILL) when its ``with`` block ends, whatever happened inside.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

TESTS = Path(__file__).parent
START_TIMEOUT = 30.0
IO_TIMEOUT = 20.0


def _command(server: str, app: str, port: int) -> list[str]:
    python = [sys.executable, "-m"]
    if server == "uvicorn":
        return [*python, "uvicorn", app, "--host", "127.0.0.1", "--port", str(port)]
    if server.startswith("hypercorn-"):
        worker = server.removeprefix("hypercorn-")
        return [*python, "hypercorn", "-k", worker, "-b", f"127.0.0.1:{port}", app]
    if server == "granian":
        return [*python, "granian", "--interface", "asgi", "--port", str(port), app]
    if server == "gunicorn":  # the worker class and settings come in serve()'s args
        return [*python, "gunicorn", app, "--bind", f"127.0.0.1:{port}"]
    if server == "daphne":
        return [*python, "daphne", "-b", "127.0.0.1", "-p", str(port), app]
    raise ValueError(f"unknown server {server!r}")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for(condition: Callable[[], bool], what: str, timeout: float = IO_TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.01)


@dataclass
class Server:
    name: str
    port: int
    process: subprocess.Popen[bytes]
    log_path: Path

    @property
    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def connect(self) -> Connection:
        return Connection(socket.create_connection(("127.0.0.1", self.port), timeout=IO_TIMEOUT))

    def terminate(self) -> None:
        """SIGTERM to the server's main process only, as a container runtime sends it."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)

    def wait_exit(self, timeout: float) -> int:
        return self.process.wait(timeout)


@contextmanager
def serve(
    server: str,
    app: str,
    workdir: Path,
    env: dict[str, str] | None = None,
    args: Sequence[str] = (),
) -> Iterator[Server]:
    """Run ``app`` (``module:attribute`` under tests/) on ``server`` until the block ends.

    ``args`` go to the server's command line.
    """
    log_path = workdir / f"{server}.log"
    for attempt in range(3):
        port = free_port()
        with open(log_path, "wb") as log:
            process = subprocess.Popen(
                [*_command(server, app, port), *args],
                cwd=TESTS,
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**os.environ, "BGTASKS_TEST_DIR": str(workdir), **(env or {})},
                start_new_session=True,
            )
        running = Server(server, port, process, log_path)
        try:
            deadline = time.monotonic() + START_TIMEOUT
            while process.poll() is None and time.monotonic() < deadline:
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=1).close()
                    break
                except OSError:
                    time.sleep(0.05)
            else:
                if attempt < 2 and process.poll() is not None and "in use" in running.log:
                    continue  # lost the race for the port to another process; pick another
                raise AssertionError(f"{server} did not start:\n{running.log}")
            yield running
            return
        finally:
            if process.poll() is None:
                running.terminate()
                with suppress(subprocess.TimeoutExpired):
                    process.wait(15)
            with suppress(ProcessLookupError):  # what is left of the group: workers, stragglers
                os.killpg(process.pid, signal.SIGKILL)
            process.wait(5)


class Connection:
    """One keep-alive HTTP/1.1 connection."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buffer = b""

    def __enter__(self) -> Connection:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.sock.close()

    def _read_until(self, marker: bytes) -> bytes:
        while marker not in self.buffer:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError(f"server closed the connection; got {self.buffer!r}")
            self.buffer += chunk
        head, self.buffer = self.buffer.split(marker, 1)
        return head

    def get(self, path: str) -> tuple[int, dict[str, str], bytes]:
        request = f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
        self.sock.sendall(request.encode())
        head = self._read_until(b"\r\n\r\n").decode("latin-1")
        status_line, *header_lines = head.split("\r\n")
        headers = {}
        for line in header_lines:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        length = int(headers.get("content-length", "0"))
        while len(self.buffer) < length:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("server closed the connection mid-body")
            self.buffer += chunk
        body, self.buffer = self.buffer[:length], self.buffer[length:]
        return int(status_line.split()[1]), headers, body


def tasks_surviving_sigterm(
    server: str, app: str, workdir: Path, count: int, seconds: float
) -> int:
    """Start ``count`` background tasks of ``seconds`` each, SIGTERM the server, count the done.

    Each request is answered before its task ends; the server gets SIGTERM once every response
    is in, and then as long as it takes to exit by itself (bounded).
    """
    with serve(server, app, workdir) as running:
        for index in range(count):
            with running.connect() as connection:
                status, _, _ = connection.get(f"/sleep?name=t{index}&seconds={seconds}")
                assert status == 200
        running.terminate()
        running.wait_exit(timeout=seconds + 60)
    return sum((workdir / f"t{index}.done").exists() for index in range(count))
