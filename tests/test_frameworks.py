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
        response_complete = anyio.Event()

        async def send(message: dict[str, Any]) -> None:
            await self.send(message)
            if message["type"] == "http.response.body" and not message.get("more_body"):
                response_complete.set()

        async def receive() -> dict[str, Any]:
            # As uvicorn does: the request, then http.disconnect once the response is complete.
            # Quart 0.23 (Python 3.13+) waits for that disconnect before its call returns.
            nonlocal request_sent
            if not request_sent:
                request_sent = True
                return {"type": "http.request", "body": b"", "more_body": False}
            await response_complete.wait()
            return {"type": "http.disconnect"}

        with anyio.fail_after(20):
            await BackgroundTasksMiddleware(app)(http_scope(path=path), receive, send)
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
    import framework_apps

    framework_apps.DJANGO_PROBE[:] = [probe]  # framework_apps configures Django and its urls
    from django.core.handlers.asgi import ASGIHandler

    framework_apps.configure_django()
    return ASGIHandler()  # type: ignore[return-value]


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


# Each framework's own middleware hook, through its own test client and a real server
# (tests/framework_apps.py holds the apps, wired as the README shows).

TEST_CLIENT_BACKENDS = [
    ("starlette", "asyncio"),
    ("starlette", "trio"),
    ("fastapi", "asyncio"),
    ("fastapi", "trio"),
    ("litestar", "asyncio"),
    ("litestar", "trio"),
    ("quart", "asyncio"),
    ("falcon", "asyncio"),
    ("django", "asyncio"),
]


def own_client_get(framework: str, path: str, backend: str) -> int:
    """GET ``path`` with the framework's own test client (httpx's ASGI transport for Django)."""
    import framework_apps

    app = getattr(framework_apps, framework)
    if framework in ("starlette", "fastapi"):
        from starlette.testclient import TestClient

        with TestClient(app, backend=backend) as client:
            return int(client.get(path).status_code)
    if framework == "litestar":
        from litestar.testing import TestClient as LitestarClient

        with LitestarClient(app, backend=backend) as client:  # type: ignore[arg-type]
            return int(client.get(path).status_code)
    if framework == "falcon":
        import asyncio

        import falcon.testing

        # On Python 3.10 Falcon's sync client asks the event loop policy for the thread's loop,
        # which raises once an earlier asyncio.run() in this thread has unset it; give it one.
        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        try:
            return int(falcon.testing.TestClient(app).simulate_get(path).status_code)
        finally:
            asyncio.set_event_loop(None)
            loop.close()

    async def over_asgi() -> int:
        if framework == "quart":
            response = await app.test_client().get(path)
            return int(response.status_code)
        import httpx

        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as c:
            return int((await c.get(path)).status_code)

    return anyio.run(over_asgi)


@pytest.mark.parametrize(("framework", "backend"), TEST_CLIENT_BACKENDS)
def test_recipe_runs_tasks_of_a_success_in_its_own_test_client(
    framework: str, backend: str, tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    import framework_apps

    monkeypatch.setattr(framework_apps, "DIR", tmp_path)
    assert own_client_get(framework, "/ok?name=good", backend) == 200
    assert (tmp_path / "good.done").exists()


@pytest.mark.parametrize(("framework", "backend"), TEST_CLIENT_BACKENDS)
def test_recipe_drops_tasks_of_the_frameworks_error_response(
    framework: str,
    backend: str,
    tmp_path: Any,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    import framework_apps

    monkeypatch.setattr(framework_apps, "DIR", tmp_path)
    status = own_client_get(framework, "/fail?name=bad", backend)
    assert 400 <= status < 500
    assert not (tmp_path / "bad.done").exists()
    assert "fails run_if" in caplog.text and "framework_apps.mark_done" in caplog.text


@pytest.mark.parametrize(
    "framework", ["starlette", "fastapi", "litestar", "quart", "falcon", "django"]
)
def test_recipe_under_uvicorn(framework: str, tmp_path: Any) -> None:
    from servers import serve, wait_for

    with serve("uvicorn", f"framework_apps:{framework}", tmp_path) as running:
        # A connection per request: without CommonMiddleware Django sends chunked bodies,
        # which this small client does not read.
        with running.connect() as connection:
            assert connection.get("/ok?name=good")[0] == 200
        with running.connect() as connection:
            assert 400 <= connection.get("/fail?name=bad")[0] < 500
        wait_for((tmp_path / "good.done").exists, "the success's task")
        wait_for(lambda: "fails run_if" in running.log, "the drop of the error's task")
        assert not (tmp_path / "bad.done").exists()


def test_detached_where_lifespan_does_not_reach_says_to_install_it_outermost() -> None:
    from litestar import Litestar, get
    from litestar.middleware import DefineMiddleware
    from litestar.testing import TestClient as LitestarClient

    @get("/")
    async def index() -> str:
        return "ok"

    app = Litestar(
        [index],
        middleware=[DefineMiddleware(BackgroundTasksMiddleware, detached=True)],
        debug=True,  # the 500 carries the error's text
    )
    with LitestarClient(app) as client:
        response = client.get("/")
    assert response.status_code == 500
    assert "Install it outermost" in response.text


def test_django_request_over_wsgi_gets_an_error_that_says_asgi_is_required() -> None:
    import framework_apps

    framework_apps.configure_django()
    from django.test import RequestFactory

    request = RequestFactory().get("/ok")
    with pytest.raises(RuntimeError, match=r"WSGI.*AsyncClient|WSGI.*asgi\.py"):
        get_background_tasks(request)


def test_request_object_without_a_scope_is_a_type_error() -> None:
    with pytest.raises(TypeError, match=r"request object with an ASGI \.scope"):
        get_background_tasks(object())  # type: ignore[arg-type]
