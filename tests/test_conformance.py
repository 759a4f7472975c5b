"""bgtasks' lists against Starlette's and FastAPI's own, used the way applications use them.

Each test runs one piece of application code twice, once with the upstream class and once with
ours, and asserts the same observable outcome and order. The upstream run is the reference, so
no expected result is written down here; each test also checks that the reference did
something, so two runs that both do nothing cannot agree by accident.

Differences kept on purpose are listed in README ("Differences from FastAPI's
BackgroundTasks") and tested where they live (tests/test_tasks.py, tests/test_fastapi.py).
"""

# No `from __future__ import annotations`: FastAPI reads the endpoints' annotations at runtime.
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any

import anyio
import fastapi
import pytest
import starlette.background
import starlette.responses
from fastapi import Depends, FastAPI
from fastapi.testclient import TestClient
from helpers import Recorder, SentTypes, http_scope

import bgtasks
import bgtasks.fastapi


@dataclass(frozen=True)
class Flavour:
    """One implementation of the list, as an application imports it."""

    name: str
    tasks: Callable[..., Any]  # the list class an app constructs by hand
    task: Callable[..., Any]  # the single-task class
    injected: Any  # the annotation a FastAPI endpoint uses


THEIRS = Flavour(
    "fastapi", fastapi.BackgroundTasks, starlette.background.BackgroundTask, fastapi.BackgroundTasks
)
STARLETTE = Flavour(
    "starlette",
    starlette.background.BackgroundTasks,
    starlette.background.BackgroundTask,
    fastapi.BackgroundTasks,
)
OURS = Flavour(
    "bgtasks", bgtasks.BackgroundTasks, bgtasks.BackgroundTask, bgtasks.fastapi.BackgroundTasks
)
# The name a drop-in user imports is also what their unit tests construct by hand.
DROP_IN = Flavour(
    "bgtasks.fastapi",
    bgtasks.fastapi.BackgroundTasks,
    bgtasks.BackgroundTask,
    bgtasks.fastapi.BackgroundTasks,
)
REFERENCES = [THEIRS, STARLETTE]
CANDIDATES = [OURS, DROP_IN]
PAIRS = [
    pytest.param(ref, ours, id=f"{ours.name}-vs-{ref.name}")
    for ref in REFERENCES
    for ours in CANDIDATES
]
BACKENDS = ["asyncio", "trio"]


def record(log: list[Any], item: str, n: int = 0) -> None:
    log.append(("sync", item, n))


async def record_async(log: list[Any], item: str, n: int = 0) -> None:
    await anyio.lowlevel.checkpoint()
    log.append(("async", item, n))


async def hand_built(flavour: Flavour) -> list[Any]:
    log: list[Any] = []
    tasks = flavour.tasks(
        tasks=[flavour.task(record, log, "given"), flavour.task(record_async, log, "b")]
    )
    tasks.add_task(record, log, "added", n=1)
    tasks.add_task(record_async, log, item="added async", n=2)
    await tasks()
    return log


async def by_keyword(flavour: Flavour) -> list[Any]:
    log: list[Any] = []
    tasks = flavour.tasks()
    tasks.add_task(func=record, log=log, item="by keyword", n=3)
    tasks.add_task(func=record_async, log=log, item="async by keyword")
    await tasks()
    await flavour.task(func=record, log=log, item="single")()
    return log


async def truthiness(flavour: Flavour) -> list[bool]:
    tasks = flavour.tasks()
    empty = bool(tasks)
    tasks.add_task(record, [], "x")
    return [empty, bool(tasks), bool(flavour.tasks(tasks=None))]


async def listing(flavour: Flavour) -> list[Any]:
    log: list[Any] = []
    tasks = flavour.tasks()
    seen = [len(tasks.tasks)]
    tasks.add_task(record, log, "first", n=1)
    tasks.add_task(record_async, log, item="second")
    seen.append(len(tasks.tasks))
    seen.extend((t.func, t.args, t.kwargs, t.is_async) for t in tasks.tasks)
    await tasks()
    seen.append(log)
    return seen


class EventBus:
    """The event bus of a real application (mealie): publish after the response when the
    request has a task list, at once when it has none."""

    def __init__(self, bg: Any, publish: Callable[[str], None]) -> None:
        self.bg = bg
        self.publish = publish

    def dispatch(self, event: str) -> None:
        if self.bg:
            self.bg.add_task(self.publish, event)
        else:
            self.publish(event)


async def event_bus_in_a_response(flavour: Flavour) -> list[Any]:
    send = Recorder()
    published: list[tuple[str, bool]] = []
    tasks = flavour.tasks()
    bus = EventBus(tasks, lambda e: published.append((e, "http.response.body" in send.types)))
    for event in ("created", "updated"):
        bus.dispatch(event)
    response = starlette.responses.PlainTextResponse("ok", background=tasks)
    await response(http_scope(), empty_request, send)
    return published


async def in_a_response(flavour: Flavour) -> list[Any]:
    log: list[Any] = []
    results = []
    for response_class in (starlette.responses.PlainTextResponse, bgtasks.Response):
        send = Recorder()
        tasks = flavour.tasks()
        tasks.add_task(note_sent, log, send)
        tasks.add_task(record_async, log, "async")
        await response_class("ok", background=tasks)(http_scope(), empty_request, send)
        results.append(send.body)
    return [*results, log]


def note_sent(log: list[Any], send: Recorder) -> None:
    log.append(("sync", list(send.types)))


async def empty_request() -> dict[str, Any]:
    return {"type": "http.request", "body": b"", "more_body": False}


SCENARIOS = [hand_built, by_keyword, truthiness, listing, event_bus_in_a_response, in_a_response]


@pytest.mark.parametrize("scenario", SCENARIOS, ids=lambda f: f.__name__)
@pytest.mark.parametrize(("reference", "candidate"), PAIRS)
async def test_direct_use_matches_the_reference(
    scenario: Callable[[Flavour], Any], reference: Flavour, candidate: Flavour
) -> None:
    expected = await scenario(reference)
    assert expected, f"{scenario.__name__} observed nothing with {reference.name}"
    assert await scenario(candidate) == expected


# Injected by FastAPI: the same app built around each flavour's annotation.


def injected_app(flavour: Flavour) -> tuple[SentTypes, list[Any]]:
    Tasks = flavour.injected
    log: list[Any] = []
    api = FastAPI()
    app = SentTypes(api)

    def note(label: str) -> None:
        log.append((label, "http.response.body" in app.types))

    def from_dependency(tasks: Tasks) -> str:
        tasks.add_task(note, "added by the dependency")
        return "dep"

    @api.post("/sync")
    def sync_endpoint(tasks: Tasks, dep: Annotated[str, Depends(from_dependency)]) -> str:
        tasks.add_task(note, "added by the sync endpoint")
        tasks.add_task(func=note, label="added by keyword")
        return dep

    @api.post("/async")
    async def async_endpoint(tasks: Tasks, dep: Annotated[str, Depends(from_dependency)]) -> str:
        tasks.add_task(note, "added by the async endpoint")
        return dep

    def bus(tasks: Tasks) -> EventBus:
        return EventBus(tasks, lambda event: note(f"published {event}"))

    @api.post("/events")
    def events(bus: Annotated[EventBus, Depends(bus)]) -> int:
        for event in ("recipe created", "recipe updated", "webhook"):
            bus.dispatch(event)
        return len(log)  # events published inside the request

    @api.post("/response")
    def own_response(tasks: Tasks) -> starlette.responses.Response:
        own = flavour.tasks()
        own.add_task(note, "in the endpoint's own response")
        tasks.add_task(note, "injected")
        return starlette.responses.PlainTextResponse("own", background=own)

    return app, log


@pytest.mark.parametrize("path", ["/sync", "/async", "/events"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_injected_tasks_match_the_reference(path: str, backend: Any) -> None:
    outcomes = []
    for flavour in (THEIRS, DROP_IN):  # the annotation is the only difference
        app, log = injected_app(flavour)
        with TestClient(app, backend=backend) as client:
            response = client.post(path)
        outcomes.append((response.status_code, response.json(), log))
    assert outcomes[0][2], f"{path} ran no task with FastAPI's own list"
    assert outcomes[1] == outcomes[0]


@pytest.mark.parametrize("backend", BACKENDS)
def test_the_event_bus_publishes_after_the_response_with_the_drop_in(backend: Any) -> None:
    app, log = injected_app(DROP_IN)
    with TestClient(app, backend=backend) as client:
        assert client.post("/events").json() == 0  # nothing published inside the request
    assert log == [
        ("published recipe created", True),
        ("published recipe updated", True),
        ("published webhook", True),
    ]


@pytest.mark.parametrize("backend", BACKENDS)
def test_an_endpoints_own_background_runs_first_as_in_fastapi(backend: Any) -> None:
    # FastAPI drops the injected tasks here (fastapi#11215); bgtasks runs them, after the
    # endpoint's own, which is the one difference this path shows.
    logs = []
    for flavour in (THEIRS, DROP_IN):
        app, log = injected_app(flavour)
        with TestClient(app, backend=backend) as client:
            assert client.post("/response").text == "own"
        logs.append(log)
    assert logs[0] == [("in the endpoint's own response", True)]
    assert logs[1] == [*logs[0], ("injected", True)]
