"""Process managers with real processes: gunicorn with bgtasks' worker (recycling, HUP,
SIGTERM, quick shutdown), uvicorn-worker's own worker beside it, and ``uvicorn --workers``.
Every request answered 2xx has its task run, or named in a warning when it runs past
gunicorn's graceful_timeout; gunicorn never has to kill a draining bgtasks worker. The tests
count outcomes (log lines, PIDs, gunicorn's own messages); time bounds only stop a hang.
"""

from __future__ import annotations

import os
import signal
import threading
from collections import Counter
from pathlib import Path

import pytest
from servers import Server, serve, wait_for

OURS = "bgtasks.gunicorn.UvicornWorker"
THEIRS = "uvicorn_worker.UvicornWorker"
# What gunicorn's arbiter logs when it kills a worker instead of letting it exit.
KILLED = ("WORKER TIMEOUT", "was sent SIGKILL", "was sent SIGABRT")


def gunicorn_args(
    worker: str, *, workers: int = 1, max_requests: int = 0, timeout: int = 3, graceful: int = 20
) -> list[str]:
    args = ["-k", worker, "--workers", str(workers), "--timeout", str(timeout)]
    args += ["--graceful-timeout", str(graceful)]
    if max_requests:
        args += ["--max-requests", str(max_requests), "--max-requests-jitter", "0"]
    return args


def ran(workdir: Path) -> Counter[str]:
    log = workdir / "runs.log"
    lines = log.read_text().splitlines() if log.exists() else []
    return Counter(line.split()[0] for line in lines)


def work(server: Server, key: str, seconds: float, kind: str = "sync") -> int:
    """One request on a connection of its own; returns the PID of the worker that answered."""
    with server.connect() as connection:
        status, _, body = connection.get(f"/work?key={key}&seconds={seconds}&kind={kind}")
    assert status == 200, body
    return int(body.split()[-1])


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def env(detached: bool = False) -> dict[str, str]:
    return {"BGTASKS_TEST_DETACHED": "1" if detached else "0"}


def recycled(server: Server, times: int) -> bool:
    return server.log.count("Maximum request limit") >= times


def never_killed(log: str) -> None:
    assert not [line for line in log.splitlines() if any(word in line for word in KILLED)]


@pytest.mark.parametrize("detached", [False, True], ids=["attached", "detached"])
def test_a_recycled_worker_runs_every_task_and_is_never_killed(
    tmp_path: Path, detached: bool
) -> None:
    # Each task takes longer than --timeout: uvicorn-worker's own worker is aborted mid-drain.
    args = gunicorn_args(OURS, max_requests=3, timeout=3, graceful=20)
    with serve("gunicorn", "manager_app:app", tmp_path, env(detached), args) as server:
        keys = [f"r{n}" for n in range(6)]
        pids = set()
        for n, key in enumerate(keys):
            if n == 3:  # the next worker answers the rest, while this one drains
                wait_for(lambda: recycled(server, 1), "the first worker to recycle", 30)
            pids.add(work(server, key, 5, "async" if n % 2 else "sync"))
        wait_for(lambda: set(keys) <= set(ran(tmp_path)), "every task", 60)
        log = server.log
    assert len(pids) >= 2  # the worker was recycled with tasks in flight
    never_killed(log)


def test_uvicorn_workers_own_worker_loses_the_tasks_of_a_recycled_worker(tmp_path: Path) -> None:
    # Documents uvicorn-worker 0.4's loss, which bgtasks' worker exists to fix: once this test
    # fails, uvicorn-worker checks in while it drains.
    args = gunicorn_args(THEIRS, max_requests=3, timeout=3, graceful=20)
    with serve("gunicorn", "manager_app:app", tmp_path, env(), args) as server:
        keys = [f"lost{n}" for n in range(3)]
        [pid] = {work(server, key, 8) for key in keys}
        wait_for(lambda: not alive(pid), "gunicorn to kill the draining worker", 60)
        log = server.log
    assert "WORKER TIMEOUT" in log
    assert ran(tmp_path) == Counter()  # the worker is gone, and none of its tasks ran


def test_a_task_past_graceful_timeout_is_named_and_the_worker_exits_by_itself(
    tmp_path: Path,
) -> None:
    args = gunicorn_args(OURS, max_requests=1, timeout=2, graceful=3)
    with serve("gunicorn", "manager_app:app", tmp_path, env(), args) as server:
        pid = work(server, "stuck", 120)
        wait_for(lambda: not alive(pid), "the worker to exit", 30)
        wait_for(lambda: "manager_app.slow_task" in server.log, "the warning", 10)
        log = server.log
    assert "server's shutdown deadline ran out" in log
    never_killed(log)
    assert ran(tmp_path) == Counter()


def test_hup_during_load_loses_no_task(tmp_path: Path) -> None:
    args = gunicorn_args(OURS, workers=2, timeout=3, graceful=20)
    with serve("gunicorn", "manager_app:app", tmp_path, env(), args) as server:
        answered: list[str] = []
        pids: set[int] = set()
        stop = threading.Event()

        def load() -> None:
            for number in range(10_000):
                if stop.is_set():
                    return
                key = f"h{number}"
                try:
                    pids.add(work(server, key, 2, "async" if number % 2 else "sync"))
                except ConnectionError:  # accepted by an old worker as it closed: unanswered
                    continue
                answered.append(key)

        loader = threading.Thread(target=load, daemon=True)
        loader.start()
        wait_for(lambda: len(answered) >= 10, "10 answers", 60)
        server.process.send_signal(signal.SIGHUP)
        wait_for(lambda: len(answered) >= 40 and len(pids) >= 3, "answers from new workers", 60)
        stop.set()
        loader.join(30)
        assert not loader.is_alive()
        wait_for(lambda: set(answered) <= set(ran(tmp_path)), "every task", 60)
        log = server.log
    never_killed(log)


def test_ttou_stops_a_worker_after_its_tasks(tmp_path: Path) -> None:
    args = gunicorn_args(OURS, workers=2, timeout=2, graceful=20)
    with serve("gunicorn", "manager_app:app", tmp_path, env(), args) as server:
        keys = [f"o{n}" for n in range(6)]
        pids = {work(server, key, 4, "async" if n % 2 else "sync") for n, key in enumerate(keys)}
        server.process.send_signal(signal.SIGTTOU)  # one worker fewer: the oldest is stopped
        wait_for(lambda: not all(alive(pid) for pid in pids), "a worker to stop", 60)
        wait_for(lambda: set(keys) <= set(ran(tmp_path)), "every task", 60)
        log = server.log
    never_killed(log)


@pytest.mark.parametrize("detached", [False, True], ids=["attached", "detached"])
def test_sigterm_to_the_master_runs_the_tasks_in_flight_then_everything_exits(
    tmp_path: Path, detached: bool
) -> None:
    args = gunicorn_args(OURS, workers=2, timeout=2, graceful=20)
    with serve("gunicorn", "manager_app:app", tmp_path, env(detached), args) as server:
        keys = [f"t{n}" for n in range(4)]
        for n, key in enumerate(keys):
            work(server, key, 4, "async" if n % 2 else "sync")
        server.terminate()
        assert server.wait_exit(timeout=60) == 0
        log = server.log
    assert set(ran(tmp_path)) == set(keys)
    never_killed(log)


def test_quick_shutdown_stays_quick_and_names_what_it_abandons(tmp_path: Path) -> None:
    # graceful_timeout is 60 s: the master exits long before gunicorn would SIGKILL anyone.
    args = gunicorn_args(OURS, workers=1, timeout=2, graceful=60)
    with serve("gunicorn", "manager_app:app", tmp_path, env(), args) as server:
        work(server, "q-sync", 300)
        work(server, "q-async", 300, "async")
        server.process.send_signal(signal.SIGQUIT)
        assert server.wait_exit(timeout=30) == 0
        log = server.log
    assert "manager_app.slow_task" in log
    assert "manager_app.slow_async_task" in log
    never_killed(log)


def test_without_the_middleware_starlettes_own_tasks_drain_too(tmp_path: Path) -> None:
    args = gunicorn_args(OURS, max_requests=2, timeout=2, graceful=20)
    with serve("gunicorn", "manager_app:starlette", tmp_path, env(), args) as server:
        keys = [f"s{n}" for n in range(4)]
        pids = set()
        for n, key in enumerate(keys):
            if n == 2:
                wait_for(lambda: recycled(server, 1), "the first worker to recycle", 30)
            pids.add(work(server, key, 4))
        wait_for(lambda: set(keys) <= set(ran(tmp_path)), "every task", 60)
        log = server.log
    assert len(pids) >= 2
    never_killed(log)


@pytest.mark.parametrize("detached", [False, True], ids=["attached", "detached"])
def test_uvicorn_workers_recycle_without_losing_a_task(tmp_path: Path, detached: bool) -> None:
    args = ["--workers", "2", "--limit-max-requests", "2"]
    with serve("uvicorn", "manager_app:app", tmp_path, env(detached), args) as server:
        keys = [f"u{n}" for n in range(6)]
        answers: Counter[int] = Counter()
        for n, key in enumerate(keys):
            answers[work(server, key, 3, "async" if n % 2 else "sync")] += 1
            spent = sum(1 for count in answers.values() if count >= 2)
            wait_for(lambda s=spent: recycled(server, s), "each spent worker to stop", 30)
        wait_for(lambda: set(keys) <= set(ran(tmp_path)), "every task", 60)
    assert len(answers) >= 3  # workers were replaced with tasks in flight


@pytest.mark.parametrize("detached", [False, True], ids=["attached", "detached"])
def test_sigterm_to_uvicorn_with_workers_runs_the_tasks_in_flight(
    tmp_path: Path, detached: bool
) -> None:
    with serve("uvicorn", "manager_app:app", tmp_path, env(detached), ["--workers", "2"]) as server:
        keys = [f"v{n}" for n in range(4)]
        for n, key in enumerate(keys):
            work(server, key, 3, "async" if n % 2 else "sync")
        server.terminate()
        assert server.wait_exit(timeout=60) == 0
    assert set(ran(tmp_path)) == set(keys)
