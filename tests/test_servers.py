"""Real servers, real sockets: the response comes first, failures keep the connection, and a
SIGTERM loses no background work.

Each test starts its own server process on 127.0.0.1 and stops it when done (tests/servers.py).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from servers import serve, tasks_surviving_sigterm, wait_for

ALL_SERVERS = ["uvicorn", "hypercorn-asyncio", "hypercorn-trio", "granian", "daphne"]
LIFESPAN_SERVERS = [server for server in ALL_SERVERS if server != "daphne"]

# (server, app) pairs: the core Response, and the middleware in both of its modes. Daphne runs
# no lifespan, so detached mode cannot run there; test_detached_mode_on_daphne_fails_loudly.
CORE = [("uvicorn", "server_app:app"), ("hypercorn-trio", "server_app:app")]
MIDDLEWARE = [(server, "server_app:attached") for server in ALL_SERVERS] + [
    (server, "server_app:detached") for server in LIFESPAN_SERVERS
]
SERVED = CORE + MIDDLEWARE

# Longer than hypercorn's 3 s graceful_timeout, so that a server's own cancellation would show.
TASK_SECONDS = 4.0
TASK_COUNT = 3


@pytest.mark.parametrize(("server", "app"), SERVED)
def test_response_arrives_while_the_task_is_still_blocked(
    server: str, app: str, tmp_path: Path
) -> None:
    with serve(server, app, tmp_path) as running, running.connect() as connection:
        # The task cannot finish before the test creates the flag, which it does only once the
        # whole response is in hand. A server that held the response would time this out.
        status, _, body = connection.get("/wait?name=first")
        assert (status, body) == (200, b"ok /wait")
        assert not (tmp_path / "first.done").exists()
        (tmp_path / "first.go").touch()
        wait_for((tmp_path / "first.done").exists, "the task's side effect")


@pytest.mark.parametrize("server", ["uvicorn", "hypercorn-trio"])
def test_sync_task_also_runs_after_the_response(server: str, tmp_path: Path) -> None:
    with serve(server, "server_app:app", tmp_path) as running, running.connect() as connection:
        assert connection.get("/wait-sync?name=sync")[2] == b"ok /wait-sync"
        (tmp_path / "sync.go").touch()
        wait_for((tmp_path / "sync.done").exists, "the sync task's side effect")


@pytest.mark.parametrize(("server", "app"), SERVED)
def test_failing_task_leaves_the_keep_alive_connection_usable(
    server: str, app: str, tmp_path: Path
) -> None:
    with serve(server, app, tmp_path) as running, running.connect() as connection:
        assert connection.get("/fail?name=boom")[0] == 200
        # Wait until the failure has been handled: it is logged once the task has raised.
        wait_for(lambda: "server_app.fail_on_purpose failed" in running.log, "the error log")
        assert "task boom failed on purpose" in running.log
        status, _, body = connection.get("/ping")
        assert (status, body) == (200, b"ok /ping")


@pytest.mark.parametrize("app", ["server_app:attached", "server_app:detached"])
def test_base_exception_in_a_task_leaves_the_keep_alive_connection_usable(
    app: str, tmp_path: Path
) -> None:
    with serve("uvicorn", app, tmp_path) as running, running.connect() as connection:
        assert connection.get("/fail-base?name=base")[0] == 200
        wait_for(lambda: "fail_with_base_exception failed" in running.log, "the error log")
        status, _, body = connection.get("/ping")
        assert (status, body) == (200, b"ok /ping")
        assert connection.get("/wait?name=after")[0] == 200  # later work still runs
        (tmp_path / "after.go").touch()
        wait_for((tmp_path / "after.done").exists, "the next request's task")


@pytest.mark.parametrize(("server", "app"), MIDDLEWARE)
def test_sigterm_loses_no_background_work(server: str, app: str, tmp_path: Path) -> None:
    done = tasks_surviving_sigterm(server, app, tmp_path, TASK_COUNT, TASK_SECONDS)
    assert done == TASK_COUNT, (tmp_path / f"{server}.log").read_text()


@pytest.mark.parametrize("app", ["server_app:bounded_attached", "server_app:bounded_detached"])
def test_shutdown_ends_on_time_with_a_sync_task_stuck_in_io(app: str, tmp_path: Path) -> None:
    # The task sleeps 120 s; shutdown_timeout is 1 s. Joining its thread would keep the
    # server alive for two minutes; the process must exit long before that. uvicorn waits for
    # running calls before lifespan shutdown, without limit by default: attached mode is
    # bounded by its --timeout-graceful-shutdown, then shutdown_timeout of grace.
    with serve("uvicorn", app, tmp_path, args=["--timeout-graceful-shutdown", "1"]) as running:
        with running.connect() as connection:
            assert connection.get("/block-sync?name=stuck")[0] == 200
        wait_for((tmp_path / "stuck.started").exists, "the task to start")
        running.terminate()
        running.wait_exit(timeout=30)
        assert "server_app.block_in_io" in running.log
        assert not (tmp_path / "stuck.done").exists()


def test_back_pressure_holds_the_next_response_under_uvicorn(tmp_path: Path) -> None:
    import threading

    with serve("uvicorn", "server_app:two_pending", tmp_path) as running:
        for name in ("a", "b"):  # two requests' work pending: the budget is full
            with running.connect() as connection:
                assert connection.get(f"/wait?name={name}")[0] == 200
        third: list[int] = []

        def request() -> None:
            with running.connect() as connection:
                third.append(connection.get("/wait?name=c")[0])

        thread = threading.Thread(target=request)
        thread.start()
        # The third response is held before its final body; a broken bound would let it
        # through at once. (Its status line may arrive; the test waits for the whole reply.)
        thread.join(1.0)
        assert third == []
        (tmp_path / "a.go").touch()  # room for one more
        thread.join(20)
        assert third == [200]
        for name in ("b", "c"):
            (tmp_path / f"{name}.go").touch()
        wait_for((tmp_path / "c.done").exists, "the third request's task")


def test_sync_work_that_waits_gets_more_threads_under_uvicorn(tmp_path: Path) -> None:
    from concurrent.futures import ThreadPoolExecutor

    with serve("uvicorn", "server_app:attached", tmp_path) as running:

        def request(index: int) -> int:
            with running.connect() as connection:
                return connection.get(f"/sleep-sync?name=s{index}&seconds=0.03")[0]

        with ThreadPoolExecutor(8) as pool:
            assert list(pool.map(request, range(40))) == [200] * 40
        for index in range(40):
            wait_for((tmp_path / f"s{index}.thread").exists, f"task s{index}")
    threads = {(tmp_path / f"s{index}.thread").read_text() for index in range(40)}
    assert len(threads) > 1


def test_detached_mode_on_daphne_fails_loudly(tmp_path: Path) -> None:
    with serve("daphne", "server_app:detached", tmp_path) as running, running.connect() as conn:
        status, _, _ = conn.get("/wait?name=never")
        assert status == 500
        wait_for(lambda: "needs the ASGI lifespan protocol" in running.log, "the error log")


def test_readme_example_serves_and_writes_its_log_line(tmp_path: Path) -> None:
    log = tmp_path / "example.log"
    env = {"BGTASKS_EXAMPLE_LOG": str(log)}
    with serve("uvicorn", "example:app", tmp_path, env) as running, running.connect() as conn:
        status, _, body = conn.get("/hello")
        assert status == 200 and body.startswith(b"Hello!")
        wait_for(lambda: log.exists() and log.read_text() == "GET /hello\n", "the log line")
