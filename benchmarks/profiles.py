"""Profiles of the async-task paths that trail their incumbent (issue 16), with pyinstrument.

Each path is one app of benchmarks/apps.py called in process, as a server would call it, with a
fresh scope per request; the profile covers only the calls. It prints pyinstrument's call tree
per app, on the event loop asked for, so that a gap in e2e.py can be traced to its frames.

    python benchmarks/profiles.py [--loop asyncio|trio] [--requests 20000] [app ...]

Apps default to the FastAPI and middleware rows with an async task and their incumbents.
"""

from __future__ import annotations

import argparse
from typing import Any

import anyio
import apps  # benchmarks/, the script's own directory
from pyinstrument import Profiler

DEFAULT_APPS = [
    "fastapi_own_write_log_async",
    "fastapi_ours_write_log_async",
    "fastapi_mw_write_log_async",
    "starlette_write_log_async",
    "mw_attached_write_log_async",
]
SCOPE: dict[str, Any] = {
    "type": "http",
    "asgi": {"version": "3.0"},
    "http_version": "1.1",
    "method": "GET",
    "scheme": "http",
    "path": "/",
    "raw_path": b"/",
    "root_path": "",
    "query_string": b"",
    "headers": [(b"host", b"127.0.0.1")],
    "client": ("127.0.0.1", 50000),
    "server": ("127.0.0.1", 8000),
}


async def receive() -> dict[str, Any]:
    return {"type": "http.request", "body": b"", "more_body": False}


async def send(message: dict[str, Any]) -> None:
    return None


async def profile(name: str, requests: int) -> str:
    app = getattr(apps, name)
    for _ in range(500):  # warm up: imports, caches, the engine's consumers
        await app(dict(SCOPE), receive, send)
    profiler = Profiler(interval=0.0001, async_mode="disabled")
    profiler.start()
    for _ in range(requests):
        await app(dict(SCOPE), receive, send)
    profiler.stop()
    return profiler.output_text(unicode=False, color=False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--loop", default="asyncio", choices=["asyncio", "trio"])
    parser.add_argument("--requests", type=int, default=20000)
    parser.add_argument("apps", nargs="*", default=DEFAULT_APPS)
    args = parser.parse_args()
    for name in args.apps:
        print(f"## {name} ({args.loop}, {args.requests} requests)\n")
        print(anyio.run(profile, name, args.requests, backend=args.loop))


if __name__ == "__main__":
    main()
