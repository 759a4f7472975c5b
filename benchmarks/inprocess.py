"""In-process benchmark: one ASGI call per request, no server, on asyncio, uvloop and trio.

Three implementations answer the same request and run the same no-op tasks:

* floor: a hand-written raw ASGI app that sends start and body, then calls the tasks itself
  (async ones awaited, sync ones called inline on the loop: the least any primitive could do);
* starlette: ``starlette.responses.Response`` with ``starlette.background.BackgroundTasks``;
* bgtasks: ``bgtasks.Response`` with ``bgtasks.BackgroundTasks``.

Each request builds its tasks and response from scratch, as an endpoint would. Variants and
implementations are interleaved within each repeat, and the figure is the median over repeats
of the mean time per call. Ratios compare figures from the same run.

    python benchmarks/inprocess.py [--repeats 7] [--loops asyncio,uvloop,trio]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import starlette.background
import starlette.responses

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


IMPLEMENTATIONS: dict[str, Callable[[list[Callable[[], Any]]], Awaitable[None]]] = {
    "floor": floor,
    "starlette": with_starlette,
    "bgtasks": with_bgtasks,
}


def calls_for(variant: str, implementation: str) -> int:
    if "sync" in variant and implementation == "starlette":
        return 60 if variant.startswith("10") or "mixed" in variant else 300
    if "sync" in variant and implementation == "bgtasks":
        return 400
    return 3000


async def sample(implementation: str, variant: str) -> float:
    run, funcs, calls = (
        IMPLEMENTATIONS[implementation],
        VARIANTS[variant],
        calls_for(variant, implementation),
    )
    for _ in range(calls // 10):  # warm up
        await run(funcs)
    start = time.perf_counter()
    for _ in range(calls):
        await run(funcs)
    return (time.perf_counter() - start) / calls * 1e6


async def measure(repeats: int) -> dict[tuple[str, str], float]:
    samples: dict[tuple[str, str], list[float]] = {}
    for _ in range(repeats):
        for variant in VARIANTS:
            for implementation in IMPLEMENTATIONS:
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
            "| bgtasks ÷ floor | bgtasks ÷ Starlette |"
        )
        print("|---|---|---|---|---|---|")
        for variant in VARIANTS:
            base, theirs, ours = (results[variant, name] for name in IMPLEMENTATIONS)
            print(
                f"| {variant} | {base:.2f} | {theirs:.2f} | {ours:.2f} | "
                f"{ours / base:.2f}× | {ours / theirs:.2f}× |"
            )
        print(flush=True)


if __name__ == "__main__":
    main()
