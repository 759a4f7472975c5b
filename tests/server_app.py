"""ASGI apps that the server tests serve in a real server process.

Tasks and tests coordinate through files in ``BGTASKS_TEST_DIR``: a task waits for
``<name>.go``, which the test creates only after the response has arrived, and then writes
``<name>.done``. Waits are bounded, so a broken server fails a test instead of hanging it.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from urllib.parse import parse_qs

import anyio

from bgtasks import BackgroundTask, Response
from bgtasks._types import Receive, Scope, Send

logging.basicConfig(level=logging.INFO, format="%(name)s %(levelname)s %(message)s")

DIR = Path(os.environ.get("BGTASKS_TEST_DIR", "."))
WAIT_LIMIT = 60.0


async def wait_for_flag(name: str) -> None:
    with anyio.fail_after(WAIT_LIMIT):
        while not (DIR / f"{name}.go").exists():
            await anyio.sleep(0.01)
    (DIR / f"{name}.done").write_text("done")


def wait_for_flag_sync(name: str) -> None:
    deadline = time.monotonic() + WAIT_LIMIT
    while not (DIR / f"{name}.go").exists():
        if time.monotonic() > deadline:
            raise TimeoutError(name)
        time.sleep(0.01)
    (DIR / f"{name}.done").write_text("done")


def fail_on_purpose(name: str) -> None:
    (DIR / f"{name}.ran").write_text("ran")
    raise RuntimeError(f"task {name} failed on purpose")


async def lifespan(receive: Receive, send: Send) -> None:
    while True:
        message = await receive()
        await send({"type": message["type"] + ".complete"})
        if message["type"] == "lifespan.shutdown":
            return


async def app(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] == "lifespan":
        return await lifespan(receive, send)
    name = parse_qs(scope["query_string"].decode()).get("name", ["task"])[0]
    background = {
        "/wait": BackgroundTask(wait_for_flag, name),
        "/wait-sync": BackgroundTask(wait_for_flag_sync, name),
        "/fail": BackgroundTask(fail_on_purpose, name),
    }.get(scope["path"])
    await Response(f"ok {scope['path']}", background=background)(scope, receive, send)
