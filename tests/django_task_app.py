"""Django task functions and the views that enqueue them, for tests/test_django.py.

Django's configuration and ROOT_URLCONF are framework_apps'; these views join its urls. Task
functions must live at module level, as Django's task API requires.
"""

# No `from __future__ import annotations`: Django reads nothing here at runtime, but the task
# decorator inspects the functions' signatures.
import threading
from typing import Any

import anyio.lowlevel
import framework_apps

framework_apps.configure_django()

from django.http import Http404, HttpRequest, HttpResponse  # noqa: E402
from django.urls import path  # noqa: E402

try:  # Django 6
    from django.tasks import task
except ImportError:  # Django 4.2 to 5.2: the django-tasks package
    from django_tasks import task  # type: ignore[no-redef]

# What the tasks and views saw, in order; the tests clear it.
EVENTS: list[Any] = []
RESULTS: list[Any] = []


@task()
def record_sync(name: str) -> str:
    EVENTS.append(("ran", name, threading.get_ident()))
    return name.upper()


@task()
async def record_async(name: str) -> str:
    await anyio.lowlevel.checkpoint()
    EVENTS.append(("ran", name, threading.get_ident()))
    return name.upper()


@task()
def fails(name: str) -> None:
    EVENTS.append(("ran", name, threading.get_ident()))
    raise ValueError(f"{name} failed")


@task()
def returns_no_json(name: str) -> object:
    EVENTS.append(("ran", name, threading.get_ident()))
    return object()


@task(takes_context=True)
def with_context(context: Any, name: str) -> str:
    EVENTS.append(("ran", name, context.task_result.id))
    return name


@task()
def mark_done(name: str) -> None:
    framework_apps.mark_done(name)


def enqueue_sync(request: HttpRequest) -> HttpResponse:  # Django runs it in a thread
    result = TASKS[request.GET["task"]].enqueue(request.GET["name"])
    EVENTS.append(("enqueued", result.status))
    RESULTS.append(result)
    return HttpResponse("ok")


async def enqueue_async(request: HttpRequest) -> HttpResponse:
    result = await TASKS[request.GET["task"]].aenqueue(request.GET["name"])
    EVENTS.append(("enqueued", result.status))
    RESULTS.append(result)
    return HttpResponse("ok")


async def enqueue_then_404(request: HttpRequest) -> HttpResponse:
    RESULTS.append(await record_sync.aenqueue(request.GET["name"]))
    raise Http404("not here")


TASKS = {
    "record_sync": record_sync,
    "record_async": record_async,
    "fails": fails,
    "with_context": with_context,
    "returns_no_json": returns_no_json,
    "mark_done": mark_done,
}

urlpatterns = [
    path("tasks/sync", enqueue_sync),
    path("tasks/async", enqueue_async),
    path("tasks/404", enqueue_then_404),
]
