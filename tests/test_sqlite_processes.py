"""SQLiteDispatcher against real servers and real deaths: SIGKILL in the middle of a load and
a restart, two servers sharing one file, and gunicorn giving up on a draining worker. Every
request answered 2xx must have its call run. uvicorn runs asyncio; hypercorn's trio worker
runs trio.

The app (tests/sqlite_app.py) holds every call until the test creates the gate file, so a
kill always finds the answered calls still running: nothing here depends on timing.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import threading
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from servers import Server, serve, wait_for

APP = "sqlite_app:app"
SERVERS = ["uvicorn", "hypercorn-trio"]
RECOVERY = 60.0  # seconds a restarted or surviving server gets to run the calls


def ran(workdir: Path) -> Counter[str]:
    log = workdir / "runs.log"
    lines = log.read_text().splitlines() if log.exists() else []
    return Counter(line.split()[0] for line in lines)


def pids_of(workdir: Path, keys: set[str]) -> set[int]:
    lines = (workdir / "runs.log").read_text().splitlines()
    return {int(pid) for key, pid in (line.split() for line in lines) if key in keys}


def status(workdir: Path) -> dict[str, int]:
    with sqlite3.connect(workdir / "jobs.sqlite3") as connection:
        return dict(connection.execute("SELECT state, count(*) FROM bgtasks_calls GROUP BY state"))


class Load:
    """Client threads, each on its own keep-alive connection, sending /work with fresh keys
    until stopped, the server goes away, or each has sent ``per_thread``."""

    def __init__(self, server: Server, prefix: str, threads: int = 4, per_thread: int = 10**6):
        self.server = server
        self.prefix = prefix
        self.per_thread = per_thread
        self.answered: set[str] = set()
        self.pids: set[int] = set()  # of the processes that answered
        self.errors: list[str] = []
        self.stopped = threading.Event()
        self.lock = threading.Lock()
        self.threads = [
            threading.Thread(target=self._run, args=(index,), daemon=True)
            for index in range(threads)
        ]

    def _run(self, index: int) -> None:
        try:
            with self.server.connect() as connection:
                for number in range(self.per_thread):
                    if self.stopped.is_set():
                        return
                    key = f"{self.prefix}{index}-{number}"
                    kind = "async" if number % 2 else "sync"
                    status_code, _, body = connection.get(f"/work?key={key}&kind={kind}")
                    if status_code == 200:
                        with self.lock:
                            self.answered.add(key)
                            self.pids.add(int(body.split()[-1]))
                    else:
                        self.errors.append(f"{key}: {status_code}")
        except OSError:  # the server was killed under us
            return

    def __len__(self) -> int:
        with self.lock:
            return len(self.answered)

    @contextmanager
    def running(self) -> Iterator[Load]:
        for thread in self.threads:
            thread.start()
        try:
            yield self
        finally:
            self.stopped.set()
            for thread in self.threads:
                thread.join(30)


def kill(server: Server) -> None:
    """SIGKILL to the server's whole process group: nothing of it may clean up."""
    os.killpg(server.process.pid, signal.SIGKILL)
    server.process.wait(10)


@pytest.mark.parametrize("detached", [False, True], ids=["attached", "detached"])
@pytest.mark.parametrize("server", SERVERS)
def test_sigkill_in_the_middle_of_a_load_loses_no_answered_call(
    server: str, detached: bool, tmp_path: Path
) -> None:
    env = {"BGTASKS_TEST_DETACHED": "1" if detached else "0"}
    with serve(server, APP, tmp_path, env) as first:
        load = Load(first, "k")
        with load.running():
            wait_for(lambda: len(load) >= 40, "40 answered requests", 60)
            kill(first)  # the load is still sending
    answered = set(load.answered)
    assert not load.errors
    assert ran(tmp_path) == Counter()  # every answered call was held, none had run
    assert status(tmp_path).get("running", 0) >= len(answered)
    (tmp_path / "gate").touch()
    with serve(server, APP, tmp_path, env):
        wait_for(lambda: answered <= set(ran(tmp_path)), "every answered call to run", RECOVERY)
    assert not pids_of(tmp_path, answered) & load.pids  # the restarted process ran them


@pytest.mark.parametrize("server", SERVERS)
def test_two_servers_on_one_file_run_every_call_exactly_once(server: str, tmp_path: Path) -> None:
    (tmp_path / "gate").touch()
    with serve(server, APP, tmp_path) as one, serve(server, APP, tmp_path) as two:
        loads = [Load(one, "a", per_thread=25), Load(two, "b", per_thread=25)]
        with loads[0].running(), loads[1].running():
            for load in loads:
                for thread in load.threads:
                    thread.join(120)
        answered = loads[0].answered | loads[1].answered
        assert len(answered) == 200
        wait_for(lambda: set(ran(tmp_path)) >= answered, "every call to run", RECOVERY)
        wait_for(lambda: status(tmp_path) == {}, "the file to empty", RECOVERY)
    assert ran(tmp_path) == Counter(dict.fromkeys(answered, 1))


@pytest.mark.parametrize("server", SERVERS)
def test_the_calls_of_a_killed_server_run_in_the_other(server: str, tmp_path: Path) -> None:
    with serve(server, APP, tmp_path) as survivor, serve(server, APP, tmp_path) as doomed:
        load = Load(doomed, "d", threads=2, per_thread=10)
        with load.running():
            for thread in load.threads:
                thread.join(60)
        assert len(load) == 20
        kill(doomed)
        (tmp_path / "gate").touch()
        wait_for(lambda: load.answered <= set(ran(tmp_path)), "the survivor to run them", RECOVERY)
        ran_by = pids_of(tmp_path, load.answered)
        assert not ran_by & load.pids
        with survivor.connect() as connection:
            assert ran_by == {int(connection.get("/work?key=probe")[2].split()[-1])}
        assert "died holding calls" in survivor.log


def test_gunicorn_giving_up_on_a_draining_worker_loses_no_call(tmp_path: Path) -> None:
    # The case of issue 21, with uvicorn-worker's own worker: it recycles after 3 requests and
    # stops checking in with the arbiter while it drains, so gunicorn aborts it after --timeout.
    # In memory that lost every task; in the file, the next worker runs them.
    args = [
        "-k",
        "uvicorn_worker.UvicornWorker",
        "--workers",
        "2",
        "--max-requests",
        "3",
        "--timeout",
        "4",
        "--graceful-timeout",
        "60",
    ]
    env = {"BGTASKS_TEST_SHUTDOWN": "60"}
    with serve("gunicorn", APP, tmp_path, env=env, args=args) as server:
        answered: set[str] = set()
        served_by: set[int] = set()
        for number in range(8):
            with server.connect() as connection:
                status_code, _, body = connection.get(f"/work?key=g{number}")
            assert status_code == 200
            answered.add(f"g{number}")
            served_by.add(int(body.split()[-1]))
        wait_for(lambda: "WORKER TIMEOUT" in server.log, "gunicorn to abort a worker", 60)
        assert ran(tmp_path) == Counter()
        (tmp_path / "gate").touch()
        wait_for(lambda: answered <= set(ran(tmp_path)), "every answered call to run", RECOVERY)
    assert len(served_by) >= 2
