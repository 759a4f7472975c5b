"""SQLiteDispatcher in one process, on asyncio and trio: what is written, when it runs, retries,
timeouts, leases, orphans, the operator's view and bad input. Real processes and SIGKILL are in
tests/test_sqlite_processes.py."""

from __future__ import annotations

import contextvars
import logging
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from helpers import Lifespan, Recorder, answer_lifespan, http_scope, no_receive

import bgtasks.sqlite
from bgtasks import BackgroundTasks, BackgroundTasksMiddleware, Response, get_background_tasks
from bgtasks.fastapi import BackgroundTasks as DropInTasks
from bgtasks.sqlite import SQLiteDispatcher

request_id: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="unset")
runs: list[Any] = []
release = threading.Event()


def send_welcome(to: str, *, lang: str = "en") -> None:
    runs.append(("send_welcome", to, lang, request_id.get()))


async def notify(user: int) -> None:
    await anyio.lowlevel.checkpoint()
    runs.append(("notify", user, request_id.get()))


def fails_twice(key: str) -> None:
    runs.append(("fails_twice", key))
    if sum(1 for run in runs if run[0] == "fails_twice") < 3:
        raise ConnectionError(f"smtp down for {key}")


async def always_fails(key: str) -> None:
    runs.append(("always_fails", key))
    raise ValueError(f"bad address {key}")


def blocks(key: str) -> None:
    runs.append(("blocks", key))
    release.wait(20)
    runs.append(("unblocked", key))


async def sleeps(key: str) -> None:
    runs.append(("sleeps", key))
    await anyio.sleep(20)


@pytest.fixture(autouse=True)
def fresh() -> Any:
    runs.clear()
    release.clear()
    yield
    release.set()  # an abandoned thread must not outlive the test for long


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "jobs.sqlite3"


def dispatcher(path: Path, **options: Any) -> SQLiteDispatcher:
    options.setdefault("lease", 1.5)
    options.setdefault("poll_interval", 0.05)
    jobs = SQLiteDispatcher(path, **options)
    jobs.task(send_welcome)
    jobs.task(notify)
    jobs.task(fails_twice, retries=2, backoff=0.01)
    jobs.task(always_fails, retries=1, backoff=0.01)
    jobs.task(blocks)
    jobs.task(sleeps)
    return jobs


@pytest.fixture
def jobs(path: Path) -> SQLiteDispatcher:
    return dispatcher(path)


async def eventually(condition: Any, what: str, timeout: float = 15) -> None:
    with anyio.fail_after(timeout):
        while not condition():
            await anyio.sleep(0.02)


def rows(path: Path) -> list[tuple[Any, ...]]:
    with sqlite3.connect(path) as connection:
        return connection.execute(
            "SELECT name, state, owner, attempts FROM bgtasks_calls ORDER BY id"
        ).fetchall()


def insert(
    path: Path, name: str, args: str, owner: str | None, lease_until: float, state: str
) -> None:
    with sqlite3.connect(path) as connection:
        connection.execute(
            "INSERT INTO bgtasks_calls (name, args, kwargs, state, attempts, owner, lease_until)"
            " VALUES (?, ?, '{}', ?, 1, ?, ?)",
            (name, args, state, owner, lease_until),
        )


def enqueuing(*calls: tuple[Any, tuple[Any, ...], dict[str, Any]], status: int = 200) -> Any:
    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            return await answer_lifespan(receive, send)
        request_id.set("req-1")
        tasks = get_background_tasks()
        for func, args, kwargs in calls:
            tasks.enqueue(func, *args, **kwargs)
        await Response(b"ok", status_code=status)(scope, receive, send)

    return app


class BodySeen(Recorder):
    """A client that notes, for the tasks, whether the final body had gone out."""

    def sent_body(self) -> bool:
        return "http.response.body" in self.types


# 1-2. Written before the response, run after it, in process.


@pytest.mark.parametrize("detached", [False, True])
async def test_enqueued_calls_run_after_the_response_in_the_context_of_enqueue(
    jobs: SQLiteDispatcher, path: Path, detached: bool
) -> None:
    seen: list[bool] = []
    client = BodySeen()

    def note_body(label: str) -> None:
        seen.append(client.sent_body())

    jobs.task(note_body)
    app = BackgroundTasksMiddleware(
        enqueuing(
            (send_welcome, ("ada",), {"lang": "fr"}),
            (notify, (7,), {}),
            (note_body, ("x",), {}),
        ),
        dispatcher=jobs,
        detached=detached,
    )
    async with Lifespan(app).running() as lifespan:
        await app(http_scope(), no_receive, client)
        assert client.messages[0]["status"] == 200
        with anyio.fail_after(10):
            await app.wait_idle()
        assert runs == [("send_welcome", "ada", "fr", "req-1"), ("notify", 7, "req-1")]
        assert seen == [True]
        assert jobs.status() == {"queued": 0, "running": 0, "failed": 0}
        assert rows(path) == []  # finished calls do not pile up
        assert await lifespan.step("shutdown") == "lifespan.shutdown.complete"


async def test_the_call_is_in_the_file_before_the_client_hears_of_it(
    jobs: SQLiteDispatcher, path: Path
) -> None:
    in_file: list[list[Any]] = []

    class Client(Recorder):
        async def __call__(self, message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                in_file.append(await anyio.to_thread.run_sync(rows, path))
            await super().__call__(message)

    app = BackgroundTasksMiddleware(enqueuing((blocks, ("k",), {})), dispatcher=jobs)
    async with anyio.create_task_group() as group:
        group.start_soon(app, http_scope(), no_receive, Client())
        await eventually(lambda: runs, "the call to start")
        release.set()
    await app.wait_idle()
    assert [row[:2] for row in in_file[0]] == [("test_sqlite.blocks", "running")]
    assert rows(path) == []


async def test_a_call_that_cannot_be_written_fails_the_request_with_503(
    jobs: SQLiteDispatcher, path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with sqlite3.connect(path) as connection:
        connection.execute("DROP TABLE bgtasks_calls")  # the file is broken after startup
    app = BackgroundTasksMiddleware(enqueuing((send_welcome, ("ada",), {})), dispatcher=jobs)
    client = Recorder()
    await app(http_scope(), no_receive, client)
    await app.wait_idle()
    assert client.messages[0]["status"] == 503
    assert runs == []
    assert "test_sqlite.send_welcome" in caplog.text
    assert "no such table" in caplog.text


async def test_a_failed_request_writes_and_runs_nothing(jobs: SQLiteDispatcher, path: Path) -> None:
    app = BackgroundTasksMiddleware(
        enqueuing((send_welcome, ("ada",), {}), status=500), dispatcher=jobs
    )
    await app(http_scope(), no_receive, Recorder())
    await app.wait_idle()
    assert runs == []
    assert rows(path) == []


async def test_direct_use_writes_runs_and_deletes(jobs: SQLiteDispatcher, path: Path) -> None:
    tasks = BackgroundTasks(dispatcher=jobs)
    tasks.enqueue(send_welcome, "bob")
    tasks.enqueue(notify, user=3)
    await tasks()
    assert runs == [("send_welcome", "bob", "en", "unset"), ("notify", 3, "unset")]
    await jobs.wait_idle()  # successes are deleted by the journal's own thread
    assert rows(path) == []
    await jobs.drain(1, "test over")


# 4-5. Only registered tasks, only JSON.


async def test_an_unregistered_function_is_refused_at_enqueue(jobs: SQLiteDispatcher) -> None:
    def not_a_task() -> None: ...

    with pytest.raises(TypeError, match=r"not_a_task.*not a task of this SQLiteDispatcher"):
        BackgroundTasks(dispatcher=jobs).enqueue(not_a_task)


@pytest.mark.parametrize(
    ("args", "kwargs", "named"),
    [
        ((object(),), {}, "argument 0"),
        (("ok", (1, 2)), {}, "argument 1"),  # a tuple comes back a list
        ((), {"lang": {1: "x"}}, "keyword argument 'lang'"),  # int keys come back str
        ((float("nan"),), {}, "argument 0"),
        ((b"bytes",), {}, "argument 0"),
    ],
)
async def test_an_argument_json_does_not_give_back_is_refused_and_nothing_is_written(
    jobs: SQLiteDispatcher, path: Path, args: Any, kwargs: Any, named: str
) -> None:
    tasks = BackgroundTasks(dispatcher=jobs)
    with pytest.raises(TypeError, match=f"send_welcome.*{named}.*JSON"):
        tasks.enqueue(send_welcome, *args, **kwargs)
    await tasks()
    assert rows(path) == []


# 6. Retries and timeouts.


async def test_a_call_that_fails_twice_then_succeeds_runs_three_times(
    jobs: SQLiteDispatcher, path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    jobs.start()
    tasks = BackgroundTasks(dispatcher=jobs)
    tasks.enqueue(fails_twice, "k1")
    await tasks()  # the first attempt fails; the retries come from the file
    await eventually(lambda: len(runs) == 3 and not rows(path), "the third attempt")
    assert runs == [("fails_twice", "k1")] * 3
    assert caplog.text.count("test_sqlite.fails_twice failed (attempt") == 2
    await jobs.drain(1, "test over")


async def test_a_call_that_always_fails_is_kept_failed_with_its_error(
    jobs: SQLiteDispatcher, path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    jobs.start()
    tasks = BackgroundTasks(dispatcher=jobs)
    tasks.enqueue(always_fails, "k2")
    await tasks()
    await eventually(lambda: jobs.status()["failed"] == 1, "the last attempt")
    assert runs == [("always_fails", "k2")] * 2  # retries=1: two attempts
    [failed] = jobs.failed()
    assert (failed.name, failed.args, failed.kwargs, failed.attempts) == (
        "test_sqlite.always_fails",
        ("k2",),
        {},
        2,
    )
    assert "ValueError: bad address k2" in failed.error
    assert "Traceback" in failed.error
    assert jobs.status() == {"queued": 0, "running": 0, "failed": 1}
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert "test_sqlite.always_fails" in errors[-1].getMessage()
    await jobs.drain(1, "test over")


async def test_each_call_of_one_batch_keeps_its_own_row(jobs: SQLiteDispatcher, path: Path) -> None:
    tasks = BackgroundTasks(dispatcher=jobs)
    tasks.enqueue(send_welcome, "a")
    tasks.enqueue(always_fails, "b")  # retries=1: a retry, then failed
    tasks.enqueue(send_welcome, "c")
    jobs.start()
    await tasks()  # the first failure of "b" is retried, not raised
    await eventually(lambda: jobs.status()["failed"] == 1, "the retry to fail")
    await jobs.wait_idle()
    assert [(call.name, call.args) for call in jobs.failed()] == [
        ("test_sqlite.always_fails", ("b",))
    ]
    assert [row[:2] for row in rows(path)] == [("test_sqlite.always_fails", "failed")]
    await jobs.drain(1, "test over")


@pytest.mark.parametrize("task", [blocks, sleeps])
async def test_a_timeout_fails_the_attempt_of_each_kind_of_call(path: Path, task: Any) -> None:
    jobs = SQLiteDispatcher(path, lease=1.5, poll_interval=0.05)
    jobs.task(task, timeout=0.2)
    tasks = BackgroundTasks(dispatcher=jobs)
    tasks.enqueue(task, "k3")
    with pytest.raises(TimeoutError):
        await tasks()
    [failed] = jobs.failed()
    assert "TimeoutError" in failed.error
    assert runs == [(task.__name__, "k3")]  # a sync one is abandoned in its thread, not joined
    await jobs.drain(1, "test over")
    if task is blocks:  # let the abandoned thread finish here, not in the next test
        release.set()
        await eventually(lambda: ("unblocked", "k3") in runs, "the abandoned thread")
        assert jobs.failed()[0].attempts == 1  # its late return changes nothing


async def test_retry_failed_queues_the_failed_calls_again(
    jobs: SQLiteDispatcher, path: Path
) -> None:
    insert(path, "test_sqlite.send_welcome", '["again"]', None, 0, "failed")
    assert jobs.status()["failed"] == 1
    assert jobs.retry_failed() == 1
    jobs.start()
    await eventually(lambda: runs, "the requeued call")
    assert runs == [("send_welcome", "again", "en", "unset")]
    await eventually(lambda: not rows(path), "the call to be deleted")
    assert jobs.retry_failed() == 0
    await jobs.drain(1, "test over")


# 3. Leases and orphans.


HOLD_LOCK = """
import fcntl, sys, time
lock = open(sys.argv[1], "a")
fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
print("held", flush=True)
time.sleep(120)
"""


def lock_holder(path: Path, token: str) -> subprocess.Popen[str]:
    """Another process holding the lock of owner ``token``, as a live process does."""
    (Path(f"{path}.owners")).mkdir(exist_ok=True)
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_LOCK, f"{path}.owners/{token}"],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdout is not None and holder.stdout.readline() == "held\n"
    return holder


async def test_at_startup_a_process_takes_over_the_calls_of_a_dead_one(
    jobs: SQLiteDispatcher, path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    holder = lock_holder(path, "gone")
    holder.kill()  # SIGKILL: the kernel lets go of its lock
    holder.wait()
    dead = f"{socket.gethostname()}:{holder.pid}:gone"
    insert(path, "test_sqlite.send_welcome", '["orphan"]', dead, time.time() + 3600, "running")
    jobs.start()
    await eventually(lambda: runs, "the orphan to run")
    assert runs == [("send_welcome", "orphan", "en", "unset")]
    assert dead in caplog.text
    await eventually(lambda: not rows(path), "the orphan to be deleted")
    assert not Path(f"{path}.owners/gone").exists()  # its lock file went with it
    await jobs.drain(1, "test over")


async def test_at_startup_the_lock_files_of_dead_processes_are_removed(
    jobs: SQLiteDispatcher, path: Path
) -> None:
    alive = lock_holder(path, "alive")
    try:
        Path(f"{path}.owners/died").touch()  # what a process that died holding nothing leaves
        jobs.start()
        await eventually(lambda: not Path(f"{path}.owners/died").exists(), "the sweep")
        assert Path(f"{path}.owners/alive").exists()
    finally:
        alive.kill()
        alive.wait()
        await jobs.drain(1, "test over")


async def test_a_live_process_keeps_its_calls_whatever_its_pid_says(
    jobs: SQLiteDispatcher, path: Path
) -> None:
    # A PID that does not exist here, as a process in another PID namespace (a container on
    # the same machine) would have: its lock, not its PID, says it is alive.
    holder = lock_holder(path, "elsewhere")
    try:
        owner = f"{socket.gethostname()}:999999999:elsewhere"
        insert(path, "test_sqlite.send_welcome", '["kept"]', owner, time.time() + 3600, "running")
        insert(path, "test_sqlite.send_welcome", '["marker"]', None, 0, "queued")
        jobs.start()
        await eventually(lambda: runs, "a tick to run the queued call")
        await anyio.sleep(0.3)  # several more ticks
        assert runs == [("send_welcome", "marker", "en", "unset")]
        holder.kill()
        holder.wait()
        await eventually(lambda: len(runs) == 2, "the dead process's call to run")
        assert runs[1] == ("send_welcome", "kept", "en", "unset")
    finally:
        holder.kill()
        holder.wait()
        await jobs.drain(1, "test over")


async def test_a_live_lease_is_respected_and_an_expired_one_is_claimed(
    jobs: SQLiteDispatcher, path: Path
) -> None:
    elsewhere = "another-host:1:x"
    insert(path, "test_sqlite.send_welcome", '["held"]', elsewhere, time.time() + 3600, "running")
    insert(path, "test_sqlite.send_welcome", '["expired"]', elsewhere, time.time() - 1, "running")
    jobs.start()
    await eventually(lambda: len(runs) == 1 and len(rows(path)) == 1, "the expired call")
    await anyio.sleep(0.3)  # several more ticks
    assert runs == [("send_welcome", "expired", "en", "unset")]
    assert rows(path) == [("test_sqlite.send_welcome", "running", elsewhere, 1)]
    await jobs.drain(1, "test over")


async def test_a_call_running_longer_than_its_lease_is_renewed_not_taken(path: Path) -> None:
    first = dispatcher(path, lease=0.3)
    second = dispatcher(path, lease=0.3)  # another dispatcher on the file, looking to claim
    tasks = BackgroundTasks(dispatcher=first)
    tasks.enqueue(sleeps, "long")
    second.start()
    with anyio.move_on_after(1.5):  # five leases
        await tasks()
    assert runs == [("sleeps", "long")]
    await first.drain(0, "test over")
    await second.drain(0, "test over")


async def test_a_call_given_up_in_a_live_process_runs_again_once_its_lease_is_out(
    path: Path,
) -> None:
    jobs = dispatcher(path, lease=0.3)
    tasks = BackgroundTasks(dispatcher=jobs)
    tasks.enqueue(sleeps, "given up")
    with anyio.move_on_after(0.1):  # as a server's cancellation would, after its grace period
        await tasks()
    assert runs == [("sleeps", "given up")]
    await eventually(lambda: len(runs) == 2, "the lease to run out and the call to run again")
    assert rows(path)[0][1:] == ("running", rows(path)[0][2], 2)  # the second attempt
    await jobs.drain(0, "test over")


async def test_an_unknown_name_is_left_in_place_and_named_once(
    jobs: SQLiteDispatcher, path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    insert(path, "removed.by_a_deploy", "[]", None, 0, "queued")
    insert(path, "test_sqlite.send_welcome", '["marker"]', None, 0, "queued")
    jobs.start()
    await eventually(lambda: runs, "the known call")
    await anyio.sleep(0.3)  # several more ticks
    assert rows(path) == [("removed.by_a_deploy", "queued", None, 1)]
    warnings = [r for r in caplog.records if "removed.by_a_deploy" in r.getMessage()]
    assert len(warnings) == 1
    assert warnings[0].levelno == logging.WARNING
    await jobs.drain(1, "test over")


# 8. Shutdown.


async def test_what_the_drain_gives_up_stays_in_the_file_and_is_named(
    jobs: SQLiteDispatcher, path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    app = BackgroundTasksMiddleware(
        enqueuing((sleeps, ("k4",), {})), dispatcher=jobs, shutdown_timeout=0.2, detached=True
    )
    async with Lifespan(app).running() as lifespan:
        await app(http_scope(), no_receive, Recorder())
        await eventually(lambda: runs, "the call to start")
        assert await lifespan.step("shutdown") == "lifespan.shutdown.complete"
    assert rows(path)[0][:2] == ("test_sqlite.sleeps", "running")
    assert "stay in" in caplog.text
    assert "test_sqlite.sleeps" in caplog.text.split("stay in")[1]


# 4. Registration.


def test_every_form_of_task_registers_and_returns_the_function(path: Path) -> None:
    jobs = SQLiteDispatcher(path)

    def plain() -> None: ...

    async def tuned() -> None: ...

    def by_call() -> None: ...

    assert jobs.task(plain) is plain
    assert jobs.task(name="emails.tuned", retries=3, timeout=5, backoff=0.5)(tuned) is tuned
    assert jobs.task(retries=1)(by_call) is by_call
    assert jobs.name_of(plain) == f"{__name__}.{plain.__qualname__}"
    assert jobs.name_of(tuned) == "emails.tuned"
    assert jobs.name_of(by_call).endswith("by_call")


@pytest.mark.parametrize(
    ("options", "error", "match"),
    [
        ({"retries": -1}, ValueError, "retries"),
        ({"retries": "3"}, TypeError, "retries"),
        ({"retries": True}, TypeError, "retries"),
        ({"timeout": 0}, ValueError, "timeout"),
        ({"timeout": "5"}, TypeError, "timeout"),
        ({"backoff": -1}, ValueError, "backoff"),
        ({"name": ""}, TypeError, "name"),
    ],
)
def test_bad_task_options_are_refused(
    path: Path, options: dict[str, Any], error: type[Exception], match: str
) -> None:
    with pytest.raises(error, match=match):
        SQLiteDispatcher(path).task(**options)


def test_one_name_for_two_functions_is_refused(path: Path) -> None:
    jobs = SQLiteDispatcher(path)
    jobs.task(send_welcome, name="emails.send")
    with pytest.raises(ValueError, match=r"emails\.send.*already registered"):
        jobs.task(notify, name="emails.send")


def test_a_generator_function_or_a_non_callable_cannot_be_a_task(path: Path) -> None:
    def gen() -> Any:
        yield 1

    jobs = SQLiteDispatcher(path)
    with pytest.raises(TypeError, match="generator"):
        jobs.task(gen)
    with pytest.raises(TypeError, match="registers a function"):
        jobs.task(42)  # type: ignore[call-overload]


# 9. Bad ground.


@pytest.mark.parametrize(
    ("options", "error", "match"),
    [
        ({"lease": 0}, ValueError, "lease"),
        ({"lease": "30"}, TypeError, "lease"),
        ({"poll_interval": -1}, ValueError, "poll_interval"),
        ({"poll_interval": float("inf")}, ValueError, "poll_interval"),
        ({"synchronous": "OFF"}, ValueError, "synchronous"),
    ],
)
def test_bad_options_are_refused(
    path: Path, options: dict[str, Any], error: type[Exception], match: str
) -> None:
    with pytest.raises(error, match=match):
        SQLiteDispatcher(path, **options)


def test_a_bad_path_fails_in_the_constructor_naming_it(tmp_path: Path) -> None:
    not_sqlite = tmp_path / "notes.txt"
    not_sqlite.write_text("not a database, just text that is long enough to have a header\n" * 4)
    bad = {
        str(tmp_path / "missing" / "jobs.sqlite3"): "does not exist",
        str(tmp_path): "is a directory",
        str(not_sqlite): "must be an SQLite database",
        "/proc/bgtasks.sqlite3": "must be an SQLite database",
        ":memory:": "local disk",
    }
    for path, match in bad.items():
        with pytest.raises(ValueError, match=match) as raised:
            SQLiteDispatcher(path)
        assert path in str(raised.value)
    with pytest.raises(TypeError, match="path"):
        SQLiteDispatcher(42)  # type: ignore[arg-type]


@pytest.mark.skipif(sys.platform == "win32", reason="file modes")
def test_a_read_only_file_fails_in_the_constructor(tmp_path: Path) -> None:
    path = tmp_path / "jobs.sqlite3"
    SQLiteDispatcher(path)
    path.chmod(0o444)
    tmp_path.chmod(0o555)
    try:
        if sqlite3.connect(path).execute("PRAGMA user_version").fetchone() and _writable(path):
            pytest.skip("this user (root) writes read-only files anyway")
        with pytest.raises(ValueError, match=str(path)):
            SQLiteDispatcher(path)
    finally:
        tmp_path.chmod(0o755)
        path.chmod(0o644)


def _writable(path: Path) -> bool:
    try:
        with open(path, "ab"):
            return True
    except OSError:
        return False


# 7. The operator's view.


def test_the_command_line_shows_the_file_and_retries_the_failed(path: Path) -> None:
    SQLiteDispatcher(path)
    insert(path, "emails.send", '["ada"]', None, 0, "failed")
    insert(path, "emails.send", '["bob"]', None, 0, "queued")
    command = [sys.executable, "-m", "bgtasks.sqlite", str(path)]
    shown = subprocess.run(command, capture_output=True, text=True, timeout=60, check=True)
    assert "queued: 1 running: 0 failed: 1" in shown.stdout
    assert "emails.send('ada')" in shown.stdout
    retried = subprocess.run(
        [*command, "retry"], capture_output=True, text=True, timeout=60, check=True
    )
    assert "queued again: 1" in retried.stdout
    assert SQLiteDispatcher(path).status() == {"queued": 2, "running": 0, "failed": 0}
    missing = subprocess.run(
        [sys.executable, "-m", "bgtasks.sqlite", str(path) + ".missing"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert missing.returncode == 2
    assert "is not a file" in missing.stderr


def test_the_module_names_what_it_exports() -> None:
    assert set(bgtasks.sqlite.__all__) == {"FailedCall", "SQLiteDispatcher"}


# With FastAPI's drop-in, and get_background_tasks() with no argument.


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_the_fastapi_drop_in_and_the_argumentless_lookup_enqueue_to_the_file(
    path: Path, backend: Any
) -> None:
    jobs = dispatcher(path)
    api = FastAPI()

    def service(to: str) -> None:  # deep in the app, no request at hand
        get_background_tasks().enqueue(send_welcome, to, lang="de")

    @api.post("/signup/{to}")
    def signup(to: str, tasks: DropInTasks) -> dict[str, bool]:
        tasks.enqueue(notify, len(to))
        service(to)
        return {"ok": True}

    app = BackgroundTasksMiddleware(api, dispatcher=jobs)
    with TestClient(app, backend=backend) as client:
        assert client.post("/signup/ada").json() == {"ok": True}
        client.portal.call(app.wait_idle)  # type: ignore[union-attr]
        assert sorted(map(str, runs)) == sorted(
            map(str, [("notify", 3, "unset"), ("send_welcome", "ada", "de", "unset")])
        )
    assert rows(path) == []
