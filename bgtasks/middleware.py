"""BackgroundTasksMiddleware: per-request background tasks for any ASGI app, drained at shutdown.

Rules:

1. A request's tasks live in its scope, under ``SCOPE_KEY``. Frameworks copy scopes and run
   handlers in other tasks and threads; a shallow copy of the scope still holds the same
   BackgroundTasks, so ``get_background_tasks(request.scope)`` works wherever the handler runs.
   While the app runs, the same list is also in a context variable, which tasks and threads
   the app starts inherit: ``get_background_tasks()`` needs no request.
2. When a response is complete is decided by ``COMPLETES_RESPONSE`` alone (below); whether it
   succeeded, by ``run_if`` on its status. The tasks run only if the response was complete and
   succeeded, and the app returned normally, or was cancelled or lost its client (OSError)
   after the response was complete. Otherwise the work they stand for did not happen: they
   are dropped, and one warning names them.
3. Tasks run after the app returns, so an app's own ``Response(background=...)`` (which runs
   inside the app call) always goes first.
4. Nothing is spawned per request: the work goes to the engine (``_engine``). An attached call
   waits for it, so a server's cancellation of the call starts a grace period, not a
   cancellation of the work.
5. Back-pressure holds the final body of a response that has tasks while ``max_pending``
   requests' work is in flight: servers read the next request as soon as a response is
   complete, so holding only the call's return would not slow anyone down.
6. Lifespan passes through. The middleware answers startup and shutdown itself for an app that
   does not speak lifespan. On ``lifespan.shutdown`` it first waits for all work in flight, up
   to ``shutdown_timeout``, gives up the rest (naming each task), and only then lets the app's
   own shutdown begin.
7. ``detached=True`` returns the request's call as soon as the response is complete, freeing
   the server's per-request slot; a request that completes after shutdown began runs attached.
8. A server integration that knows its own deadline bounds every wait of rule 6 and of a
   cancelled request's grace period with ``limit_shutdown``: each takes the smaller of
   ``shutdown_timeout`` and what is left, so the whole drain ends by the deadline.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, MutableMapping
from contextvars import ContextVar
from typing import Protocol

import anyio

from . import _observe
from ._engine import Work, current_engine
from ._types import ASGIApp, Message, Receive, Scope, Send
from .dispatch import Dispatcher, InProcess
from .tasks import (
    BackgroundTasks,
    Run,
    close,
    has_calls,
    has_tasks,
    log_dropped,
    logger,
    send_enqueued,
    take_calls,
)

__all__ = ["BackgroundTasksMiddleware", "get_background_tasks", "limit_shutdown"]

SCOPE_KEY = "bgtasks.tasks"
# The request being handled, for get_background_tasks() with no argument. Set while the app
# runs; every task and thread the app starts copies it with the rest of the context.
_current: ContextVar[BackgroundTasks] = ContextVar("bgtasks.current")
MIDDLEWARE_KEY = "bgtasks.middleware"  # the middleware that owns the request, for integrations
DEFAULT_SHUTDOWN_TIMEOUT = 30.0
DEFAULT_MAX_PENDING = 1000

_NOT_STARTED, _RUNNING, _ENDED = "not started", "running", "ended"  # lifespan, as seen here
_shutdown_by: float | None = None  # time.monotonic() by which every drain ends (rule 8)


def limit_shutdown(seconds: float | None) -> None:
    """Make every background drain in this process end within ``seconds`` from now.

    For server integrations that know their own deadline (``bgtasks.gunicorn``): the
    middleware's shutdown drain and the grace period of requests the server cancels take the
    smaller of their own ``shutdown_timeout`` and the time left, and what is still running then
    is given up and named, one warning per task, as when ``shutdown_timeout`` runs out. A later
    call replaces the limit; ``0`` gives up at once, ``None`` removes the limit. Raises
    ValueError for a negative or non-finite number.
    """
    global _shutdown_by
    if seconds is None:
        _shutdown_by = None
        return
    if isinstance(seconds, bool) or not isinstance(seconds, (int, float)):
        raise TypeError(f"seconds must be a number, got {seconds!r}")
    if not (math.isfinite(seconds) and seconds >= 0):
        raise ValueError(f"seconds must be a finite number >= 0, got {seconds!r}")
    _shutdown_by = time.monotonic() + seconds


def _allowed(timeout: float) -> tuple[float, str]:
    # The wait a drain may take, and the words that say what bounded it.
    if _shutdown_by is not None:
        left = max(0.0, _shutdown_by - time.monotonic())
        if left < timeout:
            return left, "the server's shutdown deadline"
    return timeout, f"shutdown_timeout ({timeout}s)"


# What a client gets instead of a success when the broker did not take the request's calls.
_UNAVAILABLE_TEXT = b"Service Unavailable: the work this request asked for could not be queued.\n"
_UNAVAILABLE_START: Message = {
    "type": "http.response.start",
    "status": 503,
    "headers": [
        (b"content-type", b"text/plain; charset=utf-8"),
        (b"content-length", b"%d" % len(_UNAVAILABLE_TEXT)),
        (b"retry-after", b"5"),
    ],
}
_UNAVAILABLE_BODY: Message = {"type": "http.response.body", "body": _UNAVAILABLE_TEXT}


def _log_unsent(tasks: BackgroundTasks, reason: str) -> None:
    calls = take_calls(tasks)
    if _observe.observers:
        for call in calls:
            _observe.report("dropped", call, f"{reason}, so it was not sent")
    logger.warning(
        "%s, so its enqueued calls were not sent: [%s]",
        reason,
        ", ".join(call.name for call in calls),
    )


def _detached_without_lifespan() -> RuntimeError:
    return RuntimeError(
        "BackgroundTasksMiddleware(detached=True) needs the ASGI lifespan protocol to drain "
        "its work at shutdown, and lifespan has not reached it: either the server runs none "
        "(daphne; enable it, e.g. uvicorn --lifespan on), or a framework did not pass it on "
        "to its middleware (Litestar's middleware=[...]). Install it outermost, app = "
        "BackgroundTasksMiddleware(app, detached=True), or use detached=False."
    )


def succeeded(status: int) -> bool:
    """The default ``run_if``: a request's tasks run only when its status is below 400."""
    return status < 400

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


def get_background_tasks(request: Scope | HasScope | None = None) -> BackgroundTasks:
    """Return the BackgroundTasks of the request that ``request`` belongs to.

    Pass the request object of any framework that exposes the ASGI scope as ``.scope``
    (Starlette, FastAPI, Litestar, Quart, Django under ASGI, Falcon), or the scope itself. The
    tasks run after the response is complete; see ``BackgroundTasksMiddleware``.

    With no argument, it returns the tasks of the request being handled, from anywhere in its
    code: async code, sync code in the framework's worker thread, tasks the handler starts
    (a context variable, set while the wrapped app handles the request).

    Raises RuntimeError when the app is not wrapped, outside a request (no argument), for a
    websocket scope (which has no background tasks), and for a Django request served over
    WSGI (which has no ASGI scope).
    """
    if request is None:
        try:
            return _current.get()
        except LookupError:
            raise RuntimeError(
                "get_background_tasks() with no argument works only while an HTTP request is "
                "handled by an app wrapped in BackgroundTasksMiddleware; outside one (a "
                "command, a shell, a worker) there is no request whose tasks these would be. "
                "Run the work directly, or pass the request: get_background_tasks(request)."
            ) from None
    scope = request if type(request) is dict else _scope_of(request)
    try:
        tasks: BackgroundTasks = scope[SCOPE_KEY]
    except KeyError:
        if scope.get("type") != "http":
            raise RuntimeError(
                f"background tasks belong to HTTP requests; this is a {scope.get('type')!r} "
                f"scope, which has none. Run the work in the handler itself, or start it from "
                f"an HTTP endpoint."
            ) from None
        raise RuntimeError(
            "this request has no background tasks: wrap the ASGI app with "
            "BackgroundTasksMiddleware(app)"
        ) from None
    return tasks


class HasScope(Protocol):
    """A framework's request object: anything with the ASGI scope as ``.scope``."""

    @property
    def scope(self) -> Scope: ...


def _scope_of(request: object) -> Scope:
    scope = getattr(request, "scope", None)
    if type(scope) is dict:  # a framework's request object: the common case
        return scope
    if isinstance(request, MutableMapping):
        return request
    if isinstance(scope, MutableMapping):
        return scope
    if hasattr(request, "META"):  # Django's WSGIRequest: runserver, django.test.Client
        raise RuntimeError(
            "this Django request came through WSGI, which has no ASGI scope and no "
            "background tasks. Serve the project through asgi.py with "
            "BackgroundTasksMiddleware(get_asgi_application()), and in tests use "
            "django.test.AsyncClient against that wrapped application (or an ASGI server)."
        )
    raise TypeError(
        f"get_background_tasks needs a request object with an ASGI .scope, or the scope "
        f"itself; got {request!r}"
    )


class BackgroundTasksMiddleware:
    """Give every HTTP request a BackgroundTasks, run once its response is complete.

    Inside the app, ``get_background_tasks(request).add_task(func, *args)``.

    * When: the tasks run after the app returns, if its response was complete (final body,
      pathsend, final zerocopysend, or the last trailers when trailers were announced). The
      app's own ``Response(background=...)`` therefore runs first.
    * Failed requests: if the app raises, returns without completing its response, or answers
      with a status ``run_if`` refuses (default: below 400 runs), the tasks are dropped and one
      warning names them; the app's exception propagates unchanged.
    * Failures of tasks are logged, never raised, and never touch other requests' work.
    * ``max_pending`` (default 1000) bounds the requests whose work is queued or running: the
      next response with tasks is held before its final body until there is room.
    * Lifespan is passed through, and completed on behalf of apps that do not support it. On
      shutdown, work in flight gets up to ``shutdown_timeout`` seconds (default 30); what is
      left is given up and named (a sync task stuck in a thread is abandoned, not joined), and
      the app's own shutdown runs after that. A server's cancellation of a request's call
      gives its work the same grace period.
    * ``detached=True``: the request's call returns as soon as the response is complete. This
      needs lifespan to reach the middleware; without it, every request fails with
      RuntimeError instead of losing work.

    Non-HTTP scopes (websocket) pass through untouched.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        detached: bool = False,
        shutdown_timeout: float = DEFAULT_SHUTDOWN_TIMEOUT,
        max_pending: int = DEFAULT_MAX_PENDING,
        run_if: Callable[[int], bool] = succeeded,
        dispatcher: Dispatcher | None = None,
    ) -> None:
        if not callable(app):
            raise TypeError(f"BackgroundTasksMiddleware needs an ASGI app, got {app!r}")
        if type(detached) is not bool:
            raise TypeError(f"detached must be True or False, got {detached!r}")
        if isinstance(shutdown_timeout, bool) or not isinstance(shutdown_timeout, (int, float)):
            raise TypeError(
                f"shutdown_timeout must be a number of seconds, got {shutdown_timeout!r}"
            )
        if not shutdown_timeout >= 0:
            raise ValueError(f"shutdown_timeout must be >= 0 seconds, got {shutdown_timeout}")
        if type(max_pending) is not int:
            raise TypeError(f"max_pending must be an int, got {max_pending!r}")
        if max_pending < 1:
            raise ValueError(f"max_pending must be at least 1, got {max_pending}")
        if not callable(run_if):
            raise TypeError(
                f"run_if must be a function of the status code, such as "
                f"lambda status: status < 500; got {run_if!r}"
            )
        self.app = app
        self.detached = detached
        self.shutdown_timeout = float(shutdown_timeout)
        self.max_pending = max_pending
        if dispatcher is not None:
            BackgroundTasks(dispatcher=dispatcher)  # checks it, with the message that says how
        self.run_if = run_if
        self.dispatcher = dispatcher
        self._work = Work()
        self._lifespan = _NOT_STARTED

    async def wait_idle(self) -> None:
        """Return once no background work of this middleware is queued or running.

        Works in both modes, on asyncio and trio; meant for tests and orderly shutdowns.
        Cancelling the wait does not touch the work. With a dispatcher that runs calls in this
        process (``LocalDispatcher``, ``SQLiteDispatcher``), its calls count too.
        """
        await self._work.wait_idle()
        local = self._in_process()
        if local is not None:
            await local.wait_idle()
            await self._work.wait_idle()

    def _in_process(self) -> InProcess | None:
        # A dispatcher that runs calls in this process (LocalDispatcher, SQLiteDispatcher).
        dispatcher = self.dispatcher
        return dispatcher if isinstance(dispatcher, InProcess) else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        # The common request, in full: no enqueued calls, room in the backlog. Each rare path
        # is a method named for it, beside this one.
        if scope["type"] != "http" or SCOPE_KEY in scope:
            await self._not_ours(scope, receive, send)
            return
        if self.detached and self._lifespan is _NOT_STARTED:
            raise _detached_without_lifespan()
        tasks = scope[SCOPE_KEY] = BackgroundTasks()
        tasks.dispatcher = self.dispatcher
        scope[MIDDLEWARE_KEY] = self
        work = self._work
        max_pending = self.max_pending
        trailers = False
        complete = False
        status = 0
        held: Message | None = None  # the start message, while enqueued calls are sent
        replaced = False  # the broker refused: a 503 went out instead of the app's response

        async def tracking_send(message: Message) -> None:
            nonlocal trailers, complete, status, held, replaced
            if replaced:
                return  # the app's own response has nowhere to go
            kind = message["type"]
            if kind == "http.response.start":
                trailers = bool(message.get("trailers", False))
                status = message["status"]
                if has_calls(tasks):  # hold it: the client learns nothing before they are queued
                    held = message
                    return
            elif not complete:
                test = COMPLETES_RESPONSE.get(kind)
                complete = test is not None and test(message, trailers)
                if complete and has_tasks(tasks) and len(work) >= max_pending:
                    # Back-pressure: hold the end of the response until there is room. Holding
                    # the call's return would not do: servers read the next request on the
                    # connection as soon as the response is complete.
                    await work.wait_room(max_pending)
            if held is not None:
                start, held = held, None
                if not await self._send_enqueued(tasks, status, refused_means_503=True):
                    replaced = complete = True
                    status = 503
                    await send(_UNAVAILABLE_START)
                    await send(_UNAVAILABLE_BODY)
                    return
                await send(start)
            try:
                await send(message)
            except OSError:
                complete = True  # the client is gone: the response is as complete as it gets
                raise

        token = _current.set(tasks)  # for get_background_tasks() with no argument
        try:
            await self.app(scope, receive, tracking_send)
        except BaseException as exc:
            await self._app_raised(tasks, exc, complete)
            raise
        finally:
            _current.reset(token)
        if has_calls(tasks):  # enqueued after the response started
            await self._send_late(tasks, complete, status)
        if not has_tasks(tasks):
            close(tasks)
        elif complete and self.run_if(status):
            await self._hand_off(tasks)
        else:
            self._drop(tasks, complete, status)

    async def _not_ours(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._run_lifespan(scope, receive, send)
        else:  # another kind, or an outer middleware owns the request
            await self.app(scope, receive, send)

    async def _app_raised(self, tasks: BackgroundTasks, exc: BaseException, complete: bool) -> None:
        # The app raised; the caller re-raises once this has dealt with the request's work.
        if has_calls(tasks):
            _log_unsent(tasks, "the app raised")
        if not has_tasks(tasks):
            return
        if complete and isinstance(exc, anyio.get_cancelled_exc_class()):
            # The server cancelled the call after the response was delivered: the work
            # happened, so it gets its grace period.
            await self._grace(self._submit(tasks))
        elif complete and isinstance(exc, OSError):
            await self._hand_off(tasks)  # the client left, as in Response
        else:
            log_dropped(tasks, "the app raised, so its request's background tasks were dropped")

    async def _send_late(self, tasks: BackgroundTasks, complete: bool, status: int) -> None:
        # Calls enqueued after the response started are sent now; refusals can only be logged.
        if complete:
            await self._send_enqueued(tasks, status, refused_means_503=False)
        else:
            _log_unsent(tasks, "the app returned without completing its response")

    def _drop(self, tasks: BackgroundTasks, complete: bool, status: int) -> None:
        if not complete:
            log_dropped(tasks, "the app returned without completing its response; tasks dropped")
        else:
            log_dropped(
                tasks, f"the response's status {status} fails run_if, so its tasks were dropped"
            )

    async def _send_enqueued(
        self, tasks: BackgroundTasks, status: int, refused_means_503: bool
    ) -> bool:
        # Sends the request's enqueued calls if run_if accepts its status. False: the broker
        # refused one of them, and the caller answers 503 instead of the app's response.
        if not self.run_if(status):
            _log_unsent(tasks, f"the response's status {status} fails run_if")
            return True
        assert self.dispatcher is not None
        calls = take_calls(tasks)
        refused = await send_enqueued(tasks, self.dispatcher, calls)
        if not refused:
            return True
        consequence = (
            "the client gets 503 instead of its response"
            if refused_means_503
            else "the response had already started, so the client was not told"
        )
        logger.error(
            "the broker refused %d of %d enqueued calls; %s; calls: [%s]",
            len(refused),
            len(calls),
            consequence,
            ", ".join(call.name for call in calls),
            exc_info=refused[0][1],
        )
        return False

    def _submit(self, tasks: BackgroundTasks, now: bool = False) -> Run:
        job = Run(tasks)
        self._work.add(job)
        current_engine().submit(job, now)
        return job

    async def run(self, tasks: BackgroundTasks) -> None:
        """Run ``tasks`` now as this middleware's attached work, and return once they ran.

        For integrations that must run a request's tasks at a point of their own (the FastAPI
        dependency runs them before the request's ``yield`` dependencies close): the work is
        counted by ``wait_idle`` and the shutdown drain, and if the caller is cancelled it gets
        the grace period, then is cancelled and named. Failures are logged, never raised.
        """
        job = self._submit(tasks, now=True)
        if job.settled:  # it ran without suspending (asyncio 3.12+, see Engine.submit)
            return
        signal = job.signal = current_engine().signal()
        try:
            await signal.wait()
        except BaseException:
            await self._grace(job)
            raise

    async def _hand_off(self, tasks: BackgroundTasks) -> None:
        if self.detached and self._lifespan is _RUNNING:  # judged now: the request may be late
            self._submit(tasks)
            return
        # Attached (or detached after shutdown began): the call waits for its work, which runs
        # on the engine, outside this task, so that a server's cancellation of the call starts
        # a grace period instead of cancelling the work.
        await self.run(tasks)

    async def _grace(self, job: Run) -> None:
        # Servers cancel a request's call when they shut down (hypercorn after graceful_timeout,
        # daphne at once) or some time after the response (daphne's application_close_timeout).
        # The work gets up to shutdown_timeout more, then it is cancelled and named.
        grace, bound = _allowed(self.shutdown_timeout)
        logger.info("the server cancelled a request; its background work has %.3gs", grace)
        with anyio.CancelScope(shield=True):
            # Wait for all work in flight, not just this request's: daphne stops waiting for
            # its cancelled calls as soon as the first one ends.
            with anyio.move_on_after(grace):
                await self._work.wait_idle()
            job.cancel(f"the server cancelled the request and {bound} ran out")
            if not job.settled:  # its consumer is ending; it names what it cancelled
                signal = job.signal = current_engine().signal()
                await signal.wait()

    async def _run_lifespan(self, scope: Scope, receive: Receive, send: Send) -> None:
        received_any = False

        async def lifespan_receive() -> Message:
            nonlocal received_any
            message = await receive()
            received_any = True
            if message["type"] == "lifespan.startup":
                start = getattr(self.dispatcher, "start", None)
                if start is not None:  # e.g. SQLiteDispatcher takes over the dead's calls
                    start()
            elif message["type"] == "lifespan.shutdown":
                await self._drain()
            return message

        self._lifespan = _RUNNING
        try:
            await self.app(scope, lifespan_receive, send)
        except Exception:
            if received_any:  # the app speaks lifespan and failed in it: the server reports it
                raise
            logger.warning(
                "the app raised on the lifespan scope before receiving any message; bgtasks "
                "treats it as an app without lifespan support and completes lifespan itself",
                exc_info=True,
            )
            await self._answer_lifespan(lifespan_receive, send)
        else:
            if not received_any:
                await self._answer_lifespan(lifespan_receive, send)
        finally:
            self._lifespan = _ENDED

    async def _drain(self) -> None:
        timeout, bound = _allowed(self.shutdown_timeout)
        deadline = time.monotonic() + timeout
        cancelled = await self._work.drain(
            timeout, f"{bound} ran out; background work given up"
        )
        local = self._in_process()
        if local is not None:
            cancelled += await local.drain(
                max(0.0, deadline - time.monotonic()), f"{bound} ran out; enqueued work given up"
            )
        if cancelled:
            logger.warning(
                "%s ran out with background work of %d requests unfinished; it was cancelled",
                bound,
                cancelled,
            )
        self._lifespan = _ENDED

    @staticmethod
    async def _answer_lifespan(receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            await send({"type": message["type"] + ".complete"})
            if message["type"] == "lifespan.shutdown":
                return
