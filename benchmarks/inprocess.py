"""In-process benchmark: one ASGI call per request, no server, on asyncio, uvloop and trio.

Three implementations answer the same request and run the same no-op tasks:

* floor: a hand-written raw ASGI app that sends start and body, then calls the tasks itself
  (async ones awaited, sync ones called inline on the loop: the least any primitive could do);
* starlette: ``starlette.responses.Response`` with ``starlette.background.BackgroundTasks``;
* bgtasks: ``bgtasks.Response`` with ``bgtasks.BackgroundTasks``;
* mw attached / mw detached: a raw ASGI app wrapped in ``BackgroundTasksMiddleware`` that adds
  the tasks with ``get_background_tasks(scope)``. Each call gets a fresh scope dict, as from a
  server. The detached clock stops only once ``wait_idle()`` says all its work has run.

Each request builds its tasks and response from scratch, as an endpoint would. Variants and
implementations are interleaved within each repeat, and the figure is the median over repeats
of the mean time per call. Ratios compare figures from the same run.

    python benchmarks/inprocess.py [--repeats 7] [--loops asyncio,uvloop,trio]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import anyio
import starlette.background
import starlette.responses
from apps import answer_lifespan

import bgtasks

Scope = dict[str, Any]
SCOPE: Scope = {"type": "http", "method": "GET", "path": "/", "headers": []}


async def receive() -> dict[str, Any]:
    return {"type": "http.request", "body": b"", "more_body": False}


async def send(message: dict[str, Any]) -> None:
    return None


async def async_noop() -> None:
    return None


def sync_noop() -> None:
    return None


# A variant is the list of tasks one request adds.
VARIANTS: dict[str, list[Callable[[], Any]]] = {
    "no task": [],
    "1 async": [async_noop],
    "10 async": [async_noop] * 10,
    "1 sync": [sync_noop],
    "10 sync": [sync_noop] * 10,
    "mixed 5+5": [async_noop, sync_noop] * 5,
}
# The middleware paths, one instance per variant; detached ones run inside a real lifespan.
START = {"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"13")]}
BODY_MESSAGE = {"type": "http.response.body", "body": b"Hello, world!"}


def _endpoint(funcs: list[Callable[[], Any]]) -> Any:
    async def app(scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            return await answer_lifespan(receive, send)
        if funcs:
            tasks = bgtasks.get_background_tasks(scope)
            for func in funcs:
                tasks.add_task(func)
        await send(START)
        await send(BODY_MESSAGE)

    return app


MIDDLEWARE = {
    (mode, variant): bgtasks.BackgroundTasksMiddleware(funcs_app, detached=mode == "detached")
    for mode in ("attached", "detached")
    for variant, funcs in VARIANTS.items()
    for funcs_app in [_endpoint(funcs)]
}
BODY = b"Hello, world!"


async def floor(funcs: list[Callable[[], Any]]) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-length", b"13")],
        }
    )
    await send({"type": "http.response.body", "body": BODY})
    for func in funcs:
        result = func()
        if result is not None:
            await result


async def with_starlette(funcs: list[Callable[[], Any]]) -> None:
    tasks = None
    if funcs:
        tasks = starlette.background.BackgroundTasks()
        for func in funcs:
            tasks.add_task(func)
    await starlette.responses.Response(BODY, background=tasks)(SCOPE, receive, send)


async def with_bgtasks(funcs: list[Callable[[], Any]]) -> None:
    tasks = None
    if funcs:
        tasks = bgtasks.BackgroundTasks()
        for func in funcs:
            tasks.add_task(func)
    await bgtasks.Response(BODY, background=tasks)(SCOPE, receive, send)


def _through(mode: str) -> Callable[[str], Awaitable[None]]:
    async def run(variant: str) -> None:
        await MIDDLEWARE[mode, variant](dict(SCOPE), receive, send)

    return run


IMPLEMENTATIONS: dict[str, Callable[[list[Callable[[], Any]]], Awaitable[None]]] = {
    "floor": floor,
    "starlette": with_starlette,
    "bgtasks": with_bgtasks,
}
MIDDLEWARE_IMPLEMENTATIONS = {
    "mw attached": _through("attached"),
    "mw detached": _through("detached"),
}
NAMES = [*IMPLEMENTATIONS, *MIDDLEWARE_IMPLEMENTATIONS]


def calls_for(variant: str, implementation: str) -> int:
    if "sync" in variant and implementation == "starlette":
        return 60 if variant.startswith("10") or "mixed" in variant else 300
    if "sync" in variant and implementation != "floor":
        return 400
    return 3000


async def sample(implementation: str, variant: str) -> float:
    calls = calls_for(variant, implementation)
    if implementation in MIDDLEWARE_IMPLEMENTATIONS:
        through = MIDDLEWARE_IMPLEMENTATIONS[implementation]
        middleware = MIDDLEWARE[implementation.removeprefix("mw "), variant]

        async def call() -> None:
            await through(variant)

    else:
        run, funcs = IMPLEMENTATIONS[implementation], VARIANTS[variant]
        middleware = None

        async def call() -> None:
            await run(funcs)

    for _ in range(calls // 10):  # warm up
        await call()
    if middleware is not None:
        await middleware.wait_idle()
    start = time.perf_counter()
    for _ in range(calls):
        await call()
    if middleware is not None:
        await middleware.wait_idle()  # detached work counts until it has run
    return (time.perf_counter() - start) / calls * 1e6


@asynccontextmanager
async def middleware_started() -> AsyncIterator[None]:
    """Every middleware variant inside a running lifespan (detached mode needs one)."""
    stop = anyio.Event()
    async with anyio.create_task_group() as group:
        for app in MIDDLEWARE.values():
            group.start_soon(_lifespan, app, stop)
        await anyio.wait_all_tasks_blocked()
        yield
        stop.set()


async def _lifespan(app: Any, stop: anyio.Event) -> None:
    """Play the server's side of lifespan: startup now, shutdown once ``stop`` is set."""
    started = False

    async def lifespan_receive() -> dict[str, Any]:
        nonlocal started
        if not started:
            started = True
            return {"type": "lifespan.startup"}
        await stop.wait()
        return {"type": "lifespan.shutdown"}

    await app({"type": "lifespan", "state": {}}, lifespan_receive, send)


async def measure(repeats: int) -> dict[tuple[str, str], float]:
    samples: dict[tuple[str, str], list[float]] = {}
    async with middleware_started():
        for _ in range(repeats):
            for variant in VARIANTS:
                for implementation in NAMES:
                    value = await sample(implementation, variant)
                    samples.setdefault((variant, implementation), []).append(value)
    return {key: statistics.median(values) for key, values in samples.items()}


def run_loop(loop: str, repeats: int) -> dict[tuple[str, str], float]:
    if loop == "uvloop":
        return anyio.run(measure, repeats, backend="asyncio", backend_options={"use_uvloop": True})
    return anyio.run(measure, repeats, backend=loop)


def main() -> None:
    parser = argparse.ArgumentParser(description="bgtasks vs Starlette vs a raw ASGI floor")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--loops", default="asyncio,uvloop,trio")
    args = parser.parse_args()
    print(
        f"Median of {args.repeats} repeats, µs per ASGI call; "
        "ratios are bgtasks ÷ floor and bgtasks ÷ Starlette from the same run.\n"
    )
    for loop in args.loops.split(","):
        results = run_loop(loop, args.repeats)
        print(f"**{loop}**\n")
        print(
            "| variant | floor µs | Starlette µs | bgtasks µs "
            "| bgtasks ÷ floor | bgtasks ÷ Starlette "
            "| mw attached µs (÷ Starlette) | mw detached µs (÷ Starlette) |"
        )
        print("|---|---|---|---|---|---|---|---|")
        for variant in VARIANTS:
            base, theirs, ours, attached, detached = (results[variant, name] for name in NAMES)
            print(
                f"| {variant} | {base:.2f} | {theirs:.2f} | {ours:.2f} | "
                f"{ours / base:.2f}× | {ours / theirs:.2f}× | "
                f"{attached:.2f} ({attached / theirs:.2f}×) | "
                f"{detached:.2f} ({detached / theirs:.2f}×) |"
            )
        print(flush=True)


if __name__ == "__main__":
    main()
