"""BackgroundTasksMiddleware: per-request background tasks for any ASGI app, drained at shutdown.

Rules:

1. A request's tasks live in its scope, under ``SCOPE_KEY``. Frameworks copy scopes and run
   handlers in other tasks and threads; a shallow copy of the scope still holds the same
   BackgroundTasks, so ``get_background_tasks(request.scope)`` works wherever the handler runs.
2. When a response is complete is decided by ``COMPLETES_RESPONSE`` alone (below). The tasks
   run only if the app returned normally *and* its response was complete. Otherwise the work
   they stand for did not happen: they are dropped, and one warning names them.
3. Tasks run after the app returns, so an app's own ``Response(background=...)`` (which runs
   inside the app call) always goes first.
4. Lifespan passes through. The middleware answers startup and shutdown itself for an app that
   does not speak lifespan. On ``lifespan.shutdown`` it first waits for every background run
   in flight, up to ``shutdown_timeout``, cancels the rest (naming each task), and only then
   lets the app's own shutdown begin.
5. ``detached=True`` runs tasks in a task group owned by lifespan, so the request's ASGI call
   returns as soon as the response is complete, freeing the server's per-request slot.
"""

from __future__ import annotations

from collections.abc import Callable

import anyio
import anyio.abc

from ._types import ASGIApp, Message, Receive, Scope, Send
from .tasks import BackgroundTasks, log_dropped, logger, run_background

__all__ = ["BackgroundTasksMiddleware", "get_background_tasks"]

SCOPE_KEY = "bgtasks.tasks"
DEFAULT_SHUTDOWN_TIMEOUT = 30.0

# The one table that says when an ASGI response is complete. Each entry maps a message type to
# a test of (message, trailers announced in http.response.start). Types not listed (start,
# informational, push...) never complete a response. A send that raises OSError (ASGI 2.4: the
# client is gone) also ends the response, as far as the client is concerned.
COMPLETES_RESPONSE: dict[str, Callable[[Message, bool], bool]] = {
    "http.response.body": lambda m, trailers: not trailers and not m.get("more_body", False),
    "http.response.zerocopysend": lambda m, trailers: (
        not trailers and not m.get("more_body", False)
    ),
    "http.response.trailers": lambda m, trailers: trailers and not m.get("more_trailers", False),
    "http.response.pathsend": lambda m, trailers: True,
}


def get_background_tasks(scope: Scope) -> BackgroundTasks:
    """Return the BackgroundTasks of the request that ``scope`` belongs to.

    Pass the scope your framework exposes (``request.scope`` in Starlette, FastAPI, Litestar,
    Quart, Django and Falcon). The tasks run after the response is complete; see
    ``BackgroundTasksMiddleware``. Raises RuntimeError when the app is not wrapped.
    """
    try:
        tasks: BackgroundTasks = scope[SCOPE_KEY]
    except KeyError:
        raise RuntimeError(
            "this request has no background tasks: wrap the ASGI app with "
            "BackgroundTasksMiddleware(app)"
        ) from None
    return tasks


class _InFlight:
    """Background runs in progress, so that shutdown can wait for them and cancel stragglers."""

    def __init__(self) -> None:
        self.runs: dict[anyio.CancelScope, BackgroundTasks] = {}
        self.idle: anyio.Event | None = None

    async def run(self, tasks: BackgroundTasks, scope: anyio.CancelScope | None = None) -> None:
        with scope or anyio.CancelScope() as scope:
            self.runs[scope] = tasks
            try:
                await run_background(tasks)
            finally:
                del self.runs[scope]
                if not self.runs and self.idle is not None:
                    self.idle.set()
                    self.idle = None

    async def wait_idle(self) -> None:
        while self.runs:
            if self.idle is None:
                self.idle = anyio.Event()
            await self.idle.wait()

    async def run_with_grace(self, tasks: BackgroundTasks, grace: float) -> None:
        # Servers cancel a request's call when they shut down (hypercorn after graceful_timeout,
        # daphne at once) or some time after the response (daphne's application_close_timeout).
        # So the work runs shielded in a child task, and a cancellation of the request only
        # starts a grace period of `grace` seconds, after which the work is cancelled too. The
        # servers wait for a cancelled call to end, so the work gets to finish.
        work = anyio.CancelScope(shield=True)
        finished = anyio.Event()

        async def shielded() -> None:
            try:
                await self.run(tasks, work)
            finally:
                finished.set()

        async with anyio.create_task_group() as group:
            group.start_soon(shielded)
            try:
                await finished.wait()
            except anyio.get_cancelled_exc_class():
                logger.info("the server cancelled a request; its background work has %ss", grace)
                with anyio.CancelScope(shield=True):
                    # Wait for all work in flight, not just this request's: daphne stops
                    # waiting for its cancelled calls as soon as the first one ends.
                    with anyio.move_on_after(grace):
                        await self.wait_idle()
                    work.cancel()
                raise

    async def drain(self, timeout: float) -> None:
        with anyio.move_on_after(timeout):
            await self.wait_idle()
        if self.runs:
            logger.warning(
                "shutdown_timeout (%ss) ran out with background work of %d requests unfinished; "
                "cancelling it",
                timeout,
                len(self.runs),
            )
            for scope in list(self.runs):
                scope.cancel()
            with anyio.move_on_after(timeout):
                await self.wait_idle()  # each cancelled run names its unfinished tasks


class BackgroundTasksMiddleware:
    """Give every HTTP request a BackgroundTasks, run once its response is complete.

    Inside the app, ``get_background_tasks(request.scope).add_task(func, *args)``.

    * When: the tasks run after the app returns, if its response was complete (final body,
      pathsend, final zerocopysend, or the last trailers when trailers were announced). The
      app's own ``Response(background=...)`` therefore runs first.
    * Failed requests: if the app raises or returns without completing its response, the tasks
      are dropped and one warning names them; the app's exception propagates unchanged.
    * Failures and cancellation of tasks: as in ``Response``; logged, never raised.
    * Lifespan is passed through, and completed on behalf of apps that do not support it. On
      shutdown, in-flight background work gets up to ``shutdown_timeout`` seconds (default 30)
      before it is cancelled; the app's own shutdown runs after that.
    * ``detached=True``: tasks run in a task group owned by lifespan, so the request's ASGI
      call returns as soon as the response is complete. This needs a server that runs lifespan;
      without it, every request fails with RuntimeError instead of losing work.

    Non-HTTP scopes (websocket) pass through untouched.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        detached: bool = False,
        shutdown_timeout: float = DEFAULT_SHUTDOWN_TIMEOUT,
    ) -> None:
        if not callable(app):
            raise TypeError(f"BackgroundTasksMiddleware needs an ASGI app, got {app!r}")
        if isinstance(shutdown_timeout, bool) or not isinstance(shutdown_timeout, (int, float)):
            raise TypeError(
                f"shutdown_timeout must be a number of seconds, got {shutdown_timeout!r}"
            )
        if not shutdown_timeout >= 0:
            raise ValueError(f"shutdown_timeout must be >= 0 seconds, got {shutdown_timeout}")
        self.app = app
        self.detached = detached
        self.shutdown_timeout = float(shutdown_timeout)
        self._in_flight = _InFlight()
        self._group: anyio.abc.TaskGroup | None = None  # open from lifespan startup to shutdown
        self._lifespan_started = False

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(scope, receive, send)
        elif scope["type"] != "http" or SCOPE_KEY in scope:
            await self.app(scope, receive, send)  # another kind, or an outer middleware owns it
        else:
            await self._http(scope, receive, send)

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        group = self._group
        if self.detached and not self._lifespan_started:
            raise RuntimeError(
                "BackgroundTasksMiddleware(detached=True) needs the ASGI lifespan protocol, and "
                "this server has not started it. Enable lifespan on the server, or use "
                "detached=False."
            )
        tasks = scope[SCOPE_KEY] = BackgroundTasks()
        trailers = False
        complete = False

        async def tracking_send(message: Message) -> None:
            nonlocal trailers, complete
            kind = message["type"]
            if kind == "http.response.start":
                trailers = bool(message.get("trailers", False))
            elif not complete:
                test = COMPLETES_RESPONSE.get(kind)
                complete = test is not None and test(message, trailers)
            try:
                await send(message)
            except OSError:
                complete = True  # the client is gone: the response is as complete as it gets
                raise

        try:
            await self.app(scope, receive, tracking_send)
        except BaseException:
            if tasks:
                log_dropped(tasks, "the app raised, so its request's background tasks were dropped")
            raise
        if not tasks:
            return
        if not complete:
            log_dropped(tasks, "the app returned without completing its response; tasks dropped")
        elif group is not None and self.detached:
            group.start_soon(self._in_flight.run, tasks)
        else:  # attached, or detached after shutdown began: the server's own drain covers it
            await self._in_flight.run_with_grace(tasks, self.shutdown_timeout)

    async def _lifespan(self, scope: Scope, receive: Receive, send: Send) -> None:
        received_any = False

        async def lifespan_receive() -> Message:
            nonlocal received_any
            message = await receive()
            received_any = True
            if message["type"] == "lifespan.shutdown":
                await self._in_flight.drain(self.shutdown_timeout)
                self._group = None
            return message

        app_error: Exception | None = None
        async with anyio.create_task_group() as group:
            self._group = group
            self._lifespan_started = True
            try:
                await self.app(scope, lifespan_receive, send)
            except Exception as exc:
                if received_any:  # the app speaks lifespan and failed in it: the server reports it
                    app_error = exc
                    group.cancel_scope.cancel()
                else:
                    logger.info("the app does not support lifespan; bgtasks completes it instead")
                    await self._answer_lifespan(lifespan_receive, send)
            else:
                if not received_any:
                    await self._answer_lifespan(lifespan_receive, send)
            finally:
                self._group = None
        if app_error is not None:
            raise app_error  # outside the task group, so that it is not wrapped in a group

    @staticmethod
    async def _answer_lifespan(receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            await send({"type": message["type"] + ".complete"})
            if message["type"] == "lifespan.shutdown":
                return
