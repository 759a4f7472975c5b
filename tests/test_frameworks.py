"""Real apps in six frameworks, wrapped in BackgroundTasksMiddleware.

Each handler adds a task with ``get_background_tasks(request.scope)``; the task records the
request id it was given, the messages sent by the time it ran, and that it was not on the loop
(sync) or was (async). Handlers run where their framework puts them: other tasks, threads, and
copied scopes.
"""

# No `from __future__ import annotations` here: FastAPI and Litestar read the handlers'
# annotations at runtime, and they name classes imported inside the app builders.
import threading
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import pytest
from helpers import Recorder, http_scope

from bgtasks import BackgroundTasksMiddleware, get_background_tasks

App = Callable[[dict[str, Any], Any, Any], Awaitable[None]]


class Probe:
    """What the tasks saw when they ran."""

    def __init__(self) -> None:
        self.send = Recorder()
        self.seen: list[tuple[str, bool]] = []
        self.loop_thread = threading.get_ident()

    def sync_task(self, label: str) -> None:
        body_sent = self.send.types[-1:] == ["http.response.body"]
        self.seen.append((label, body_sent and threading.get_ident() != self.loop_thread))

    async def async_task(self, label: str) -> None:
        body_sent = self.send.types[-1:] == ["http.response.body"]
        self.seen.append((label, body_sent and threading.get_ident() == self.loop_thread))

    def add(self, scope: dict[str, Any], where: str) -> None:
        tasks = get_background_tasks(scope)
        tasks.add_task(self.sync_task, f"{where} sync")
        tasks.add_task(self.async_task, f"{where} async")

    async def call(self, app: App, path: str) -> None:
        request_sent = False
        disconnected = anyio.Event()

        async def receive() -> dict[str, Any]:
            nonlocal request_sent
            if not request_sent:
                request_sent = True
                return {"type": "http.request", "body": b"", "more_body": False}
            await disconnected.wait()  # frameworks listen for a disconnect that never comes
            return {"type": "http.disconnect"}

        with anyio.fail_after(20):
            await BackgroundTasksMiddleware(app)(http_scope(path=path), receive, self.send)
        disconnected.set()
        assert self.send.messages[0]["status"] == 200, self.send.messages


def starlette_app(probe: Probe) -> App:
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import PlainTextResponse
    from starlette.routing import Route

    async def async_endpoint(request: Request) -> PlainTextResponse:
        probe.add(request.scope, "async handler")
        return PlainTextResponse("ok")

    def sync_endpoint(request: Request) -> PlainTextResponse:  # runs in a worker thread
        probe.add(request.scope, "sync handler")
        return PlainTextResponse("ok")

    return Starlette(routes=[Route("/async", async_endpoint), Route("/sync", sync_endpoint)])


def fastapi_app(probe: Probe) -> App:
    from fastapi import FastAPI, Request

    app = FastAPI()

    @app.get("/async")
    async def async_endpoint(request: Request) -> dict[str, str]:
        probe.add(request.scope, "async handler")
        return {"ok": "yes"}

    @app.get("/sync")
    def sync_endpoint(request: Request) -> dict[str, str]:
        probe.add(request.scope, "sync handler")
        return {"ok": "yes"}

    return app


def litestar_app(probe: Probe) -> App:
    from litestar import Litestar, Request, get

    @get("/async")
    async def async_endpoint(request: Request[Any, Any, Any]) -> str:
        probe.add(request.scope, "async handler")  # type: ignore[arg-type]
        return "ok"

    @get("/sync", sync_to_thread=True)
    def sync_endpoint(request: Request[Any, Any, Any]) -> str:
        probe.add(request.scope, "sync handler")  # type: ignore[arg-type]
        return "ok"

    return Litestar(route_handlers=[async_endpoint, sync_endpoint])


def quart_app(probe: Probe) -> App:
    from quart import Quart, request

    app = Quart(__name__)

    @app.get("/async")
    async def async_endpoint() -> str:
        probe.add(request.scope, "async handler")
        return "ok"

    @app.get("/sync")
    def sync_endpoint() -> str:  # Quart runs sync views in a thread
        probe.add(request.scope, "sync handler")
        return "ok"

    return app  # type: ignore[return-value]


def falcon_app(probe: Probe) -> App:
    import falcon.asgi

    class AsyncResource:
        async def on_get(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
            probe.add(req.scope, "async handler")
            resp.text = "ok"

    app = falcon.asgi.App()
    app.add_route("/async", AsyncResource())
    return app  # type: ignore[return-value]


def django_app(probe: Probe) -> App:
    import django
    from django.conf import settings

    if not settings.configured:
        settings.configure(
            DEBUG=False,
            ALLOWED_HOSTS=["*"],
            ROOT_URLCONF=__name__,
            SECRET_KEY="test-only",
            MIDDLEWARE=[],
            INSTALLED_APPS=[],
        )
        django.setup()
    from django.core.handlers.asgi import ASGIHandler

    DJANGO_PROBE[:] = [probe]
    return ASGIHandler()  # type: ignore[return-value]


DJANGO_PROBE: list[Probe] = []


def _django_urls() -> list[Any]:
    from django.http import HttpRequest, HttpResponse
    from django.urls import path

    async def async_view(request: HttpRequest) -> HttpResponse:
        DJANGO_PROBE[0].add(request.scope, "async handler")  # type: ignore[attr-defined]
        return HttpResponse("ok")

    def sync_view(request: HttpRequest) -> HttpResponse:  # Django runs it in a thread
        DJANGO_PROBE[0].add(request.scope, "sync handler")  # type: ignore[attr-defined]
        return HttpResponse("ok")

    return [path("async", async_view), path("sync", sync_view)]


def __getattr__(name: str) -> Any:
    if name == "urlpatterns":  # Django's ROOT_URLCONF is this module; build routes on demand
        return _django_urls()
    raise AttributeError(name)


FRAMEWORKS = {
    "starlette": (starlette_app, ["/async", "/sync"]),
    "fastapi": (fastapi_app, ["/async", "/sync"]),
    "litestar": (litestar_app, ["/async", "/sync"]),
    "falcon": (falcon_app, ["/async"]),
}
ASYNCIO_FRAMEWORKS = {
    "quart": (quart_app, ["/async", "/sync"]),
    "django": (django_app, ["/async", "/sync"]),
}


async def _check(build: Callable[[Probe], App], paths: list[str]) -> None:
    for path in paths:
        probe = Probe()
        await probe.call(build(probe), path)
        where = "sync handler" if path == "/sync" else "async handler"
        assert probe.seen == [(f"{where} sync", True), (f"{where} async", True)]


@pytest.mark.parametrize("framework", FRAMEWORKS)
async def test_tasks_added_in_a_handler_run_after_the_response(framework: str) -> None:
    await _check(*FRAMEWORKS[framework])


@pytest.mark.parametrize("anyio_backend", ["asyncio"])  # these frameworks run on asyncio only
@pytest.mark.parametrize("framework", ASYNCIO_FRAMEWORKS)
async def test_tasks_added_in_an_asyncio_framework_run_after_the_response(framework: str) -> None:
    await _check(*ASYNCIO_FRAMEWORKS[framework])
