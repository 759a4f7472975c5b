"""FastAPI: ``from bgtasks.fastapi import BackgroundTasks`` instead of FastAPI's own.

Rules:

1. ``BackgroundTasks`` is an ``Annotated`` dependency: a parameter annotated with it is a
   ``bgtasks.BackgroundTasks``, one per request, shared by the endpoint and its dependencies
   (FastAPI caches a dependency within a request). Under ``BackgroundTasksMiddleware`` it is
   the very list ``get_background_tasks(request)`` returns.
2. It runs where FastAPI runs its own tasks: after the response is sent, before the request's
   ``yield`` dependencies close, so a database session from one is still open. It gets there
   by adding one runner to FastAPI's own per-request background.
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

from collections.abc import AsyncIterator
from typing import Annotated

import fastapi

from . import tasks as _tasks
from .middleware import MIDDLEWARE_KEY, SCOPE_KEY, BackgroundTasksMiddleware

__all__ = ["BackgroundTasks"]


async def _request_tasks(
    request: fastapi.Request, background_tasks: fastapi.BackgroundTasks
) -> AsyncIterator[_tasks.BackgroundTasks]:
    scope = request.scope
    shared = scope.get(SCOPE_KEY)
    tasks = shared if isinstance(shared, _tasks.BackgroundTasks) else _tasks.BackgroundTasks()
    middleware = scope.get(MIDDLEWARE_KEY)

    async def run() -> None:
        if isinstance(middleware, BackgroundTasksMiddleware):
            await middleware.run(tasks)
        else:
            await _tasks.run_tasks(tasks)

    background_tasks.add_task(run)
    try:
        yield tasks
    except BaseException:
        _tasks.log_dropped(
            tasks, "the request ended in an exception, so its background tasks were dropped"
        )
        raise
    if _tasks.has_unstarted(tasks):  # FastAPI dropped its background: run them here
        await run()


BackgroundTasks = Annotated[_tasks.BackgroundTasks, fastapi.Depends(_request_tasks)]
"""A request's ``bgtasks.BackgroundTasks``, injected as FastAPI injects its own.

``def signup(tasks: BackgroundTasks): tasks.add_task(send_welcome, email)``
"""
