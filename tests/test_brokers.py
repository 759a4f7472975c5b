"""enqueue against real brokers and real worker processes: redis-server with a Celery worker.

Every process runs on 127.0.0.1 with a free port, is started here and stopped by PID (its
process group). redis-server comes from Debian: it is installed when missing and this runs as
root with apt-get (as on CI); otherwise these tests skip, unless ``CI`` is set, when they fail.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager, suppress
from pathlib import Path

import pytest
from servers import TESTS, Server, free_port, serve, wait_for


def _ensure(binary: str, package: str) -> str:
    found = shutil.which(binary)
    if found is None and os.geteuid() == 0 and shutil.which("apt-get"):
        install = ["apt-get", "install", "-y", "-qq", package]
        if subprocess.run(install, capture_output=True, timeout=600).returncode != 0:
            subprocess.run(["apt-get", "update", "-qq"], capture_output=True, timeout=600)
            subprocess.run(install, capture_output=True, timeout=600)
        found = shutil.which(binary)
    if found is None:
        message = f"{binary} is missing (Debian package {package})"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return found


@contextmanager
def _process(
    command: list[str], log: Path, env: dict[str, str]
) -> Iterator[subprocess.Popen[bytes]]:
    with open(log, "ab") as out:
        process = subprocess.Popen(
            command,
            cwd=TESTS,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
    try:
        yield process
    finally:
        with suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            with suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait(5)


class Redis:
    def __init__(self, binary: str, workdir: Path) -> None:
        self.binary, self.workdir = binary, workdir
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"

    @contextmanager
    def running(self) -> Iterator[subprocess.Popen[bytes]]:
        command = [
            self.binary,
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(self.workdir),
        ]
        with _process(command, self.workdir / "redis.log", dict(os.environ)) as process:
            wait_for(lambda: _answers(self.port), "redis-server to answer PING", 30)
            yield process


def _answers(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(16).startswith(b"+PONG")
    except OSError:
        return False


@pytest.fixture
def env(tmp_path: Path) -> Iterator[dict[str, str]]:
    redis = Redis(_ensure("redis-server", "redis-server"), tmp_path)
    with redis.running():
        yield {**os.environ, "BGTASKS_BROKER_URL": redis.url, "BGTASKS_TEST_DIR": str(tmp_path)}


@contextmanager
def celery_worker(env: dict[str, str], log: Path) -> Iterator[subprocess.Popen[bytes]]:
    command = [
        sys.executable,
        "-m",
        "celery",
        "-A",
        "celery_app",
        "worker",
        "--pool",
        "solo",
        "--without-gossip",
        "--without-mingle",
        "--without-heartbeat",
        "--loglevel",
        "INFO",
    ]
    start = log.stat().st_size if log.exists() else 0
    with _process(command, log, env) as process:
        wait_for(lambda: b"ready." in log.read_bytes()[start:], "the Celery worker", 60)
        yield process


def _get(server: Server, path: str) -> int:
    try:
        with server.connect() as connection:
            return connection.get(path)[0]
    except OSError:
        return 0  # the server went away: not an answer


def _lines(path: Path) -> int:
    return path.read_text().count("\n") if path.exists() else 0


def test_every_success_reaches_the_worker_and_no_failure_does(
    env: dict[str, str], tmp_path: Path
) -> None:
    with (
        celery_worker(env, tmp_path / "worker.log"),
        serve("uvicorn", "broker_web:celery", tmp_path, env) as web,
    ):
        paths = [f"/ok?name=ok{i}" for i in range(30)] + [f"/fail?name=bad{i}" for i in range(10)]
        with ThreadPoolExecutor(8) as pool:
            statuses = dict(zip(paths, pool.map(lambda p: _get(web, p), paths), strict=True))
        assert [s for p, s in statuses.items() if p.startswith("/ok")] == [200] * 30
        assert [s for p, s in statuses.items() if p.startswith("/fail")] == [400] * 10
        for i in range(30):
            wait_for((tmp_path / f"ok{i}.done").exists, f"ok{i} in the worker", 60)
        duplicates = sum(_lines(tmp_path / f"ok{i}.done") - 1 for i in range(30))
        print(f"30 successes, 30 side effects, {duplicates} duplicates")
        assert duplicates == 0
        assert web.log.count("fails run_if, so its enqueued calls were not sent") == 10
    assert not list(tmp_path.glob("bad*.done"))


def test_broker_down_answers_503_and_names_the_calls(tmp_path: Path) -> None:
    redis = Redis(_ensure("redis-server", "redis-server"), tmp_path)
    env = {**os.environ, "BGTASKS_BROKER_URL": redis.url, "BGTASKS_TEST_DIR": str(tmp_path)}
    with redis.running(), serve("uvicorn", "broker_web:celery", tmp_path, env) as web:
        assert _get(web, "/ok?name=before") == 200
    # redis-server is stopped now; the web server is gone too: start one against the dead broker.
    with serve("uvicorn", "broker_web:celery", tmp_path, env) as web:
        assert _get(web, "/ok?name=down") == 503
        wait_for(lambda: "client gets 503" in web.log, "the error log")
        assert "calls: [tests.record]" in web.log


def test_sigterm_to_the_web_server_mid_load_loses_nothing_answered_2xx(
    env: dict[str, str], tmp_path: Path
) -> None:
    with (
        celery_worker(env, tmp_path / "worker.log"),
        serve("uvicorn", "broker_web:celery", tmp_path, env) as web,
    ):
        paths = [f"/ok?name=t{i}" for i in range(200)]

        def get(path: str) -> int:
            if path == "/ok?name=t40":
                web.terminate()  # mid-load, as a deploy does
            return _get(web, path)

        with ThreadPoolExecutor(8) as pool:
            statuses = dict(zip(paths, pool.map(get, paths), strict=True))
        answered = [p.split("=")[1] for p, s in statuses.items() if s == 200]
        assert answered, statuses
        for name in answered:
            wait_for((tmp_path / f"{name}.done").exists, f"{name} in the worker", 60)
        print(f"{len(answered)} of 200 answered 2xx before the server stopped; all done")


def test_sigkill_of_the_worker_mid_load_then_a_restart_loses_nothing(
    env: dict[str, str], tmp_path: Path
) -> None:
    log = tmp_path / "worker.log"
    with serve("uvicorn", "broker_web:celery", tmp_path, env) as web:
        with celery_worker(env, log) as worker:
            paths = [f"/ok?name=k{i}&seconds=0.1" for i in range(20)]
            with ThreadPoolExecutor(4) as pool:
                assert list(pool.map(lambda p: _get(web, p), paths)) == [200] * 20
            wait_for((tmp_path / "k2.done").exists, "some work to be done", 60)
            os.killpg(worker.pid, signal.SIGKILL)  # mid-task, no chance to ack or requeue
            worker.wait(10)
        done_before = sum((tmp_path / f"k{i}.done").exists() for i in range(20))
        with celery_worker(env, log):
            for i in range(20):
                wait_for((tmp_path / f"k{i}.done").exists, f"k{i} after the restart", 90)
        duplicates = sum(_lines(tmp_path / f"k{i}.done") - 1 for i in range(20))
        print(f"20 answered 2xx; {done_before} done before SIGKILL; all 20 after; {duplicates} dup")


def test_the_same_app_under_hypercorn_with_trio(env: dict[str, str], tmp_path: Path) -> None:
    with (
        celery_worker(env, tmp_path / "worker.log"),
        serve("hypercorn-trio", "broker_web:celery", tmp_path, env) as web,
    ):
        assert _get(web, "/ok?name=trio") == 200
        assert _get(web, "/fail?name=trio-bad") == 400
        wait_for((tmp_path / "trio.done").exists, "the call in the worker", 60)
        wait_for(lambda: "fails run_if" in web.log, "the failed request's log line")
    assert not (tmp_path / "trio-bad.done").exists()
