"""The README's quick start: a raw ASGI app that replies first, then appends a log line.

Serve it with ``uvicorn tests.example:app``. ``BGTASKS_EXAMPLE_LOG`` picks the log file.
"""

from __future__ import annotations

import os

from bgtasks import BackgroundTasks, Receive, Response, Scope, Send

LOG_PATH = os.environ.get("BGTASKS_EXAMPLE_LOG", "bgtasks-example.log")


def write_log(message: str) -> None:
    with open(LOG_PATH, "a") as file:
        file.write(message + "\n")


async def app(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] != "http":
        return  # no lifespan work to do
    tasks = BackgroundTasks()
    tasks.add_task(write_log, f"{scope['method']} {scope['path']}")
    response = Response("Hello! The log line is written after this reply.\n", background=tasks)
    await response(scope, receive, send)
