"""Helpers shared by the tests: a recording ASGI send and scope builders."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio

Message = dict[str, Any]


class Recorder:
    """An ASGI `send` that keeps every message, and can be made to fail."""

    def __init__(self, error: BaseException | None = None) -> None:
        self.messages: list[dict[str, Any]] = []
        self.error = error

    async def __call__(self, message: dict[str, Any]) -> None:
        if self.error is not None:
            raise self.error
        self.messages.append(message)

    @property
    def types(self) -> list[str]:
        return [message["type"] for message in self.messages]

    @property
    def headers(self) -> list[tuple[bytes, bytes]]:
        return [tuple(pair) for pair in self.messages[0]["headers"]]  # type: ignore[misc]

    @property
    def body(self) -> bytes:
        return b"".join(
            m.get("body", b"") for m in self.messages if m["type"] == "http.response.body"
        )


async def answer_lifespan(receive: Any, send: Any) -> None:
    """The lifespan protocol of an app with nothing to start or stop: complete each step."""
    while True:
        message = await receive()
        await send({"type": message["type"] + ".complete"})
        if message["type"] == "lifespan.shutdown":
            return


async def no_receive() -> dict[str, Any]:
    raise AssertionError("background work must never call receive()")


def http_scope(method: str = "GET", path: str = "/") -> dict[str, Any]:
    return {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.4"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [],
        "client": ("127.0.0.1", 1234),
        "server": ("127.0.0.1", 80),
    }


class Lifespan:
    """Plays the server's side of the lifespan protocol against an app."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.to_app, self.app_inbox = anyio.create_memory_object_stream[Message](10)
        self.to_server, self.server_inbox = anyio.create_memory_object_stream[Message](10)

    async def receive(self) -> Message:
        return await self.app_inbox.receive()

    async def send(self, message: Message) -> None:
        await self.to_server.send(message)

    async def step(self, kind: str) -> str:
        await self.to_app.send({"type": f"lifespan.{kind}"})
        with anyio.fail_after(10):
            return str((await self.server_inbox.receive())["type"])

    @asynccontextmanager
    async def running(self) -> AsyncIterator[Lifespan]:
        async with anyio.create_task_group() as group:
            group.start_soon(self.app, {"type": "lifespan", "state": {}}, self.receive, self.send)
            assert await self.step("startup") == "lifespan.startup.complete"
            yield self


class SentTypes:
    """An ASGI wrapper that notes the type of each message the app sends, so that tasks can
    see what had gone out when they ran."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.types: list[str] = []

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        async def noting_send(message: Any) -> None:
            self.types.append(message["type"])
            await send(message)

        await self.app(scope, receive, noting_send)
