"""One app per framework, wired the way the README shows, with that framework's own hook.

Every app answers ``GET /ok?name=N`` by adding a task that writes ``N.done`` into ``DIR``, and
``GET /fail?name=N`` by adding the same task, then raising the framework's own 4xx error. The
tests serve them with each framework's own test client and with uvicorn.
"""

# No `from __future__ import annotations`: FastAPI and Litestar read annotations at runtime.
import os
import tempfile
from pathlib import Path
from typing import Any

from bgtasks import BackgroundTasksMiddleware, get_background_tasks

DIR = Path(os.environ.get("BGTASKS_TEST_DIR", tempfile.gettempdir()))


def mark_done(name: str) -> None:
    (DIR / f"{name}.done").write_text("done")


def _starlette() -> Any:
    from starlette.applications import Starlette
    from starlette.exceptions import HTTPException
    from starlette.requests import Request
    from starlette.responses import PlainTextResponse
    from starlette.routing import Route

    async def ok(request: Request) -> PlainTextResponse:
        get_background_tasks(request).add_task(mark_done, request.query_params["name"])
        return PlainTextResponse("ok")

    async def fail(request: Request) -> PlainTextResponse:
        get_background_tasks(request).add_task(mark_done, request.query_params["name"])
        raise HTTPException(400, "bad request")

    app = Starlette(routes=[Route("/ok", ok), Route("/fail", fail)])
    app.add_middleware(BackgroundTasksMiddleware)
    return app


def _fastapi() -> Any:
    from fastapi import FastAPI, HTTPException, Request

    app = FastAPI()
    app.add_middleware(BackgroundTasksMiddleware)

    @app.get("/ok")
    def ok(request: Request, name: str) -> str:
        get_background_tasks(request).add_task(mark_done, name)
        return "ok"

    @app.get("/fail")
    def fail(request: Request, name: str) -> str:
        get_background_tasks(request).add_task(mark_done, name)
        raise HTTPException(400, "bad request")

    return app


def _litestar() -> Any:
    from litestar import Litestar, Request, get
    from litestar.exceptions import HTTPException

    @get("/ok")
    async def ok(request: Request[Any, Any, Any], name: str) -> str:
        get_background_tasks(request).add_task(mark_done, name)
        return "ok"

    @get("/fail")
    async def fail(request: Request[Any, Any, Any], name: str) -> str:
        get_background_tasks(request).add_task(mark_done, name)
        raise HTTPException(status_code=400, detail="bad request")

    return Litestar([ok, fail], middleware=[BackgroundTasksMiddleware])


def _quart() -> Any:
    from quart import Quart, abort, request

    app = Quart(__name__)

    @app.get("/ok")
    async def ok() -> str:
        get_background_tasks(request).add_task(mark_done, request.args["name"])
        return "ok"

    @app.get("/fail")
    async def fail() -> str:
        get_background_tasks(request).add_task(mark_done, request.args["name"])
        abort(400)

    app.asgi_app = BackgroundTasksMiddleware(app.asgi_app)  # type: ignore[method-assign]
    return app


def _falcon() -> Any:
    import falcon
    import falcon.asgi

    class Ok:
        async def on_get(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
            get_background_tasks(req).add_task(mark_done, req.get_param("name"))
            resp.text = "ok"

    class Fail:
        async def on_get(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
            get_background_tasks(req).add_task(mark_done, req.get_param("name"))
            raise falcon.HTTPBadRequest(title="bad request")

    app = falcon.asgi.App()
    app.add_route("/ok", Ok())
    app.add_route("/fail", Fail())
    return BackgroundTasksMiddleware(app)


def configure_django() -> None:
    """Django's settings, once per process: ROOT_URLCONF is this module."""
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
            TASKS={  # tests/test_django.py
                "default": {"BACKEND": "bgtasks.django.BackgroundTasksBackend"},
                "at_once_outside": {
                    "BACKEND": "bgtasks.django.BackgroundTasksBackend",
                    "OPTIONS": {"OUTSIDE_REQUEST": "immediate"},
                },
            },
        )
        django.setup()


def _django() -> Any:
    configure_django()
    from django.core.asgi import get_asgi_application

    return BackgroundTasksMiddleware(get_asgi_application())  # what asgi.py holds


# test_frameworks.py's probe views share this module's Django configuration.
DJANGO_PROBE: list[Any] = []


def _django_urls() -> list[Any]:
    from django.http import Http404, HttpRequest, HttpResponse
    from django.urls import path

    async def ok(request: HttpRequest) -> HttpResponse:
        get_background_tasks(request).add_task(mark_done, request.GET["name"])
        return HttpResponse("ok")

    async def fail(request: HttpRequest) -> HttpResponse:
        get_background_tasks(request).add_task(mark_done, request.GET["name"])
        raise Http404("not here")

    async def probe_async(request: HttpRequest) -> HttpResponse:
        DJANGO_PROBE[0].add(request.scope, "async handler")
        return HttpResponse("ok")

    def probe_sync(request: HttpRequest) -> HttpResponse:  # Django runs it in a thread
        DJANGO_PROBE[0].add(request.scope, "sync handler")
        return HttpResponse("ok")

    import django_task_app  # Django's task API, run after the response: tests/test_django.py

    return [
        path("ok", ok),
        path("fail", fail),
        path("async", probe_async),
        path("sync", probe_sync),
        *django_task_app.urlpatterns,
    ]


def __getattr__(name: str) -> Any:
    # Apps are built on first use, so that a test run needs only the frameworks it serves.
    builders = {
        "starlette": _starlette,
        "fastapi": _fastapi,
        "litestar": _litestar,
        "quart": _quart,
        "falcon": _falcon,
        "django": _django,
    }
    if name == "urlpatterns":  # Django's ROOT_URLCONF is this module
        return _django_urls()
    if name in builders:
        app = builders[name]()
        globals()[name] = app
        return app
    raise AttributeError(name)
