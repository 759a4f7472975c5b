"""FastAPI: ``from bgtasks.fastapi import BackgroundTasks`` instead of FastAPI's own.

Rules:

1. ``BackgroundTasks`` is an ``Annotated`` dependency: a parameter annotated with it is a
   ``bgtasks.BackgroundTasks``, one per request, shared by the endpoint and its dependencies
   (FastAPI caches a dependency within a request). Under ``BackgroundTasksMiddleware`` it is
   the very list ``get_background_tasks(request)`` returns.
2. It runs where FastAPI runs its own tasks: after the response is sent, before the request's
   ``yield`` dependencies close, so a database session from one is still open. It gets there
   by adding one runner to FastAPI's own per-request background. It is a plain dependency, not
   a ``yield`` one (which costs FastAPI about 40 us per request): how the request ended is seen
   by a callback on FastAPI's per-request exit stack.
3. A request that ends in an exception (HTTPException, a validation error, anything an
   exception handler answers) drops its tasks, as FastAPI does, and one warning names them.
4. If FastAPI dropped its own background because the endpoint returned a Response with a
   background of its own (fastapi#11215), the tasks still run, when the request's
   dependencies close.
5. With ``BackgroundTasksMiddleware`` installed (``app.add_middleware``), the tasks run as
   its attached work: counted by ``wait_idle``, drained at shutdown, named when cancelled.

FastAPI is imported here only; the rest of bgtasks never needs it.
"""

from __future__ import annotations

from contextlib import AsyncExitStack
from typing import Annotated

import fastapi

from . import tasks as _tasks
from .middleware import MIDDLEWARE_KEY, SCOPE_KEY, BackgroundTasksMiddleware

__all__ = ["BackgroundTasks"]

# Private to FastAPI (>= 0.118): every test in tests/test_fastapi.py fails if it moves.
_REQUEST_STACK = "fastapi_inner_astack"


class _Request:
    """One request's list and how it runs: the runner in FastAPI's background, and the
    callback on FastAPI's per-request exit stack that sees how the request ended."""

    __slots__ = ("tasks", "middleware")

    def __init__(self, tasks: _tasks.BackgroundTasks, middleware: object) -> None:
        self.tasks = tasks
        self.middleware = middleware

    async def run(self) -> None:
        middleware = self.middleware
        if isinstance(middleware, BackgroundTasksMiddleware):
            await middleware.run(self.tasks)
        else:
            await _tasks.run_tasks(self.tasks)

    async def __aenter__(self) -> _Request:  # never entered: pushed on the stack by its exit
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, error: BaseException | None, traceback: object
    ) -> bool:
        if kind is not None:
            _tasks.log_dropped(
                self.tasks,
                "the request ended in an exception, so its background tasks were dropped",
            )
        elif _tasks.has_unstarted(self.tasks):  # FastAPI dropped its background: run them here
            await self.run()
        return False  # the request's exception, if any, goes on


async def _request_tasks(
    request: fastapi.Request, background_tasks: fastapi.BackgroundTasks
) -> _tasks.BackgroundTasks:
    # A plain dependency, not a `yield` one: FastAPI's machinery for those costs ~40 us per
    # request. The end of the request is seen through a callback on FastAPI's request exit
    # stack (``fastapi_inner_astack``, FastAPI >= 0.118), which closes after the response and
    # its background, before the request's earlier `yield` dependencies close.
    scope = request.scope
    shared = scope.get(SCOPE_KEY)
    tasks = shared if isinstance(shared, _tasks.BackgroundTasks) else _tasks.BackgroundTasks()
    stack = scope.get(_REQUEST_STACK)
    if not isinstance(stack, AsyncExitStack):
        raise RuntimeError(
            f"bgtasks.fastapi needs FastAPI 0.118 or later, whose routes keep a per-request "
            f"exit stack in scope[{_REQUEST_STACK!r}]; upgrade FastAPI, or use "
            f"BackgroundTasksMiddleware with get_background_tasks(request)"
        )
    state = _Request(tasks, scope.get(MIDDLEWARE_KEY))
    background_tasks.add_task(state.run)
    stack.push_async_exit(state)  # an __aexit__: the stack need not probe a bound method
    return tasks


BackgroundTasks = Annotated[_tasks.BackgroundTasks, fastapi.Depends(_request_tasks)]
"""A request's ``bgtasks.BackgroundTasks``, injected as FastAPI injects its own.

``def signup(tasks: BackgroundTasks): tasks.add_task(send_welcome, email)``
"""
