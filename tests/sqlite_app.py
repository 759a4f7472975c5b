"""The web app of the SQLite process tests: ``/work?key=K`` enqueues ``record(K)`` (sync) or,
with ``&kind=async``, ``arecord(K)``, and answers 200 once the call is in the file, with the
key and the PID of the process that served it.

The file is ``$BGTASKS_TEST_DIR/jobs.sqlite3``. A task waits until ``$BGTASKS_TEST_DIR/gate``
exists, then appends ``K PID`` to ``runs.log`` (one short append per line, which several
processes may do at once). Without a gate, a test can kill a server while every call it
answered is still running.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from urllib.parse import parse_qs

import anyio
from helpers import answer_lifespan

from bgtasks import BackgroundTasksMiddleware, Receive, Scope, Send, get_background_tasks
from bgtasks.sqlite import SQLiteDispatcher

logging.basicConfig(level=logging.INFO, format="%(process)d %(name)s %(levelname)s %(message)s")

DIR = Path(os.environ.get("BGTASKS_TEST_DIR", "."))
jobs = SQLiteDispatcher(
    DIR / "jobs.sqlite3",
    lease=float(os.environ.get("BGTASKS_TEST_LEASE", "2")),
    poll_interval=0.1,
)


def _append(key: str) -> None:
    with open(DIR / "runs.log", "a") as log:
        log.write(f"{key} {os.getpid()}\n")


@jobs.task
def record(key: str) -> None:
    while not (DIR / "gate").exists():
        time.sleep(0.01)
    _append(key)


@jobs.task
async def arecord(key: str) -> None:
    while not (DIR / "gate").exists():
        await anyio.sleep(0.01)
    _append(key)


async def endpoint(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] == "lifespan":
        return await answer_lifespan(receive, send)
    query = parse_qs(scope["query_string"].decode())
    key = query["key"][0]
    task = arecord if query.get("kind") == ["async"] else record
    get_background_tasks(scope).enqueue(task, key)
    body = f"queued {key} {os.getpid()}".encode()
    headers = [(b"content-type", b"text/plain"), (b"content-length", b"%d" % len(body))]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": body})


app = BackgroundTasksMiddleware(
    endpoint,
    dispatcher=jobs,
    detached=os.environ.get("BGTASKS_TEST_DETACHED") == "1",
    shutdown_timeout=float(os.environ.get("BGTASKS_TEST_SHUTDOWN", "30")),
)
