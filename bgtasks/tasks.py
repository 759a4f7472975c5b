"""BackgroundTask and BackgroundTasks: dispatch, order, context, failure and cancellation.

Theory of operation:

* A task is classified once, when it is created. Coroutine functions, partials of them (nested
  too) and objects with an async ``__call__`` are *async*: they are awaited on the event loop.
  Every other callable is *sync*: it runs in a worker thread (see ``_engine``). A sync callable
  that returns an awaitable (``lambda: notify(x)``) has that awaitable awaited on the loop.
* A task snapshots the contextvars when it is created, like ``loop.call_soon``. Async tasks run
  in that snapshot without a new task: ``_drive`` steps each coroutine inside
  ``Context.run``, which is what asyncio does for every Task step, for the price of a call.
  ``run_ready`` (``Response``, the engine) takes the first steps of the tasks at the head of a
  list itself, and makes a driver only once one is needed: a task suspended or failed, or the
  next one is sync.
  A lone ``BackgroundTask`` may be run many times, even at once: each run gets its own copy.
* ``BackgroundTasks`` is a list with a cursor. A run *claims* tasks at the cursor, one async
  task or a stretch of consecutive sync tasks (one thread hop) at a time, so every task runs at
  most once however many runs there are, and tasks added while it runs (even by a running
  task) run too, in order. Once a run has ended, the list is closed: ``add_task`` raises.
* Whatever a task's own code raises (any BaseException) is a failure of that task: kept, and
  the next task runs. Only after the last one does the call raise: the exception itself when
  one task failed, a flat ExceptionGroup when several did. What is not an Exception is
  wrapped in a RuntimeError whose ``__cause__`` it is.
* A cancellation of the run (asyncio's thrown in by the loop, any trio.Cancelled), and
  KeyboardInterrupt or SystemExit raised in an async task, propagate at once; before they do,
  one warning on the ``bgtasks`` logger names every task that was cancelled or never started.
  In a worker thread they cannot stop anything, so there they are failures like any other.
* A chain of tasks that never suspend reaches a checkpoint every ``_CHECKPOINT_EVERY`` tasks,
  so cancellation and other requests get through.
"""

from __future__ import annotations

import contextvars
import functools
import sys
import types
from collections.abc import Awaitable, Callable, Generator, Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Any, NoReturn, ParamSpec, overload

import anyio

from . import _observe
from ._engine import Job, SyncBatch
from .dispatch import Call, Dispatcher, send_calls

if sys.version_info < (3, 11):  # pragma: no cover
    from exceptiongroup import ExceptionGroup

if TYPE_CHECKING:
    import logging

__all__ = ["BackgroundTask", "BackgroundTasks"]

P = ParamSpec("P")

_CHECKPOINT_EVERY = 100  # tasks run in a row without suspending before the driver yields

class _Logger:
    """The ``bgtasks`` logger, looked up on first use: importing logging costs ~3 ms, and an app
    whose background work never goes wrong need not pay it."""

    def __getattr__(self, name: str) -> Any:
        import logging

        return getattr(logging.getLogger("bgtasks"), name)


logger: logging.Logger = _Logger()  # type: ignore[assignment]

Failure = tuple["BackgroundTask", Exception]
_Coroutine = types.CoroutineType
_copy_context = contextvars.copy_context


def _unwrap(func: object) -> object:
    while isinstance(func, functools.partial):
        func = func.func
    return func


def _unwrap_method(func: object) -> object:
    return getattr(func, "__func__", func)


# inspect's code flags, spelled out: importing inspect costs ~4 ms, and only the slow path of
# classification needs it.
_CO_GENERATOR, _CO_COROUTINE, _CO_ASYNC_GENERATOR = 0x20, 0x80, 0x200
_GENERATOR_FLAGS = _CO_GENERATOR | _CO_ASYNC_GENERATOR


def is_async_callable(func: object) -> bool:
    """Classify a task: True to await it on the loop, False to call it in a worker thread.

    Generator functions are refused: calling one only makes a generator, its body never runs.
    """
    return _classify(func, "add_task")


def _classify(func: object, where: str) -> bool:
    # is_async_callable, and the TypeError of ``where`` for what is not callable at all.
    kind = type(func)
    if kind is types.FunctionType or (
        kind is types.MethodType and type(func.__func__) is types.FunctionType  # type: ignore[attr-defined]
    ):  # the common case, fast
        code = func.__code__  # type: ignore[attr-defined]
        if code.co_flags & _CO_COROUTINE:
            return True
        if code.co_flags & _GENERATOR_FLAGS:
            _reject_generator(func)
        # Python 3.12's inspect.markcoroutinefunction marks sync functions that return
        # coroutines; only then is the slow check needed.
        if not hasattr(_unwrap_method(func), "_is_coroutine_marker"):
            return False
    if not callable(func):
        reject_non_callable(func, where)
    import inspect

    func = _unwrap(func)
    if inspect.iscoroutinefunction(func):
        return True
    if inspect.isgeneratorfunction(func) or inspect.isasyncgenfunction(func):
        _reject_generator(func)
    if isinstance(func, type):
        return False  # calling a class builds an instance, whatever its __call__ is
    return inspect.iscoroutinefunction(getattr(func, "__call__", None))  # noqa: B004


def _name_of(func: object) -> str:
    func = _unwrap(func)
    qualname = getattr(func, "__qualname__", None)
    module = getattr(func, "__module__", None)
    if not isinstance(qualname, str):  # a callable instance: name its class
        qualname = type(func).__qualname__
        module = type(func).__module__
    elif module is None and hasattr(func, "__self__"):  # a bound builtin, such as list.append
        module = type(func.__self__).__module__
    return f"{module}.{qualname}" if module else qualname


def _reject_generator(func: object) -> NoReturn:
    raise TypeError(
        f"{_name_of(func)} is a generator function: calling it only creates a generator, and "
        f"its body would never run. Make it a plain (async) function, or pass a function that "
        f"consumes it, e.g. add_task(list, gen()) or an async def that iterates it."
    )


class _Missing:
    __slots__ = ()

    def __repr__(self) -> str:
        return "<missing>"


_MISSING: Any = _Missing()


def _func_by_keyword(kwargs: dict[str, Any], where: str) -> Any:
    # Starlette's add_task(func=f, ...): with no positional function, `func=` is the task.
    try:
        return kwargs.pop("func")
    except KeyError:
        raise TypeError(
            f"{where}() needs the function to run: {where}(func, *args, **kwargs)"
        ) from None


def reject_non_callable(func: object, where: str) -> NoReturn:
    if isinstance(func, types.CoroutineType):
        func.close()  # it can never be awaited now; closing avoids a second, vaguer warning
        raise TypeError(
            f"{where} got a coroutine object, not a function. Pass the function and its "
            f"arguments separately: {where}(send_email, to) instead of {where}(send_email(to))."
        )
    raise TypeError(
        f"{where} needs a callable, got {func!r} ({type(func).__name__}). "
        f"Pass the function itself, followed by its arguments."
    )


@types.coroutine
def _drive(
    holder: BackgroundTasks,
    failures: list[Failure] | None,
    log_unfinished: bool = True,
    index: int = 0,
    end: int = 0,
    awaitable: Any = None,
    stepped: Any = None,
    quiet: int = 0,
) -> Generator[Any, Any, None]:
    # The one place tasks run. A generator-based coroutine, so that it can step each task's
    # coroutine inside the task's own context: what a step yields goes to the event loop
    # unchanged, and what the loop sends or throws back goes in unchanged, so this works on
    # asyncio and trio alike and costs no new task. tasks[index:end] are claimed by this run
    # and not started yet; tasks[end:] are claimed at holder._next, as this run gets to them.
    # With failures=None the failures are logged here, at the end, instead of collected.
    # `stepped` is a one-item list when the caller already took the first step of `awaitable`
    # in this same task (see run_ready): the item is what that step yielded. `quiet` counts
    # the tasks finished in a row without suspending, the caller's included.
    #
    # It is on every request's path, so the common case comes first and costs least: an async
    # task whose first step finishes it (it never suspends).
    tasks = holder._tasks
    log = failures is None
    if failures is None:
        failures = []
    batch: SyncBatch | None = None
    task: BackgroundTask | None = tasks[index - 1] if awaitable is not None else None
    holder._runs += 1
    try:
        while True:
            if awaitable is None:
                if index == end:  # claim the next async task, or the next stretch of sync ones
                    if quiet >= _CHECKPOINT_EVERY:  # let cancellation and other work through
                        quiet = 0
                        task = None
                        import anyio.lowlevel

                        yield from anyio.lowlevel.checkpoint().__await__()
                    index = holder._next
                    if index >= len(tasks):
                        break
                    end = index + 1
                    if not tasks[index].is_async:
                        while end < len(tasks) and not tasks[end].is_async:
                            end += 1
                    holder._next = end
                task = tasks[index]
                if task.is_async:
                    index += 1
                    if _observe.observers:
                        task.context.run(_observe.report, "started", task)
                    try:
                        # Calling an async callable only creates its coroutine: no user code
                        # runs yet, so this needs no context. Its steps run in it, below.
                        awaitable = task.func(*task.args, **task.kwargs)
                    except BaseException as exc:
                        if _stops_the_run(exc):
                            raise
                        _fail(task, exc, failures)
                        continue
                else:
                    batch = SyncBatch(tasks[index:end])
                    yield from batch.start().__await__()
                    quiet = 0
                    if batch.errors:
                        failures.extend(batch.errors)
                    index += batch.started
                    awaitable = batch.awaitable  # returned by tasks[index - 1], its last
                    batch = None
                    if awaitable is None:
                        continue
                    task = tasks[index - 1]
            assert task is not None
            context = task.context
            current, awaitable = awaitable, None
            if stepped is not None:
                [yielded], stepped = stepped, None
            else:
                try:
                    if type(current) is not _Coroutine:
                        current = current.__await__()
                    yielded = context.run(current.send, None)
                except StopIteration:  # done in its first step: the common case
                    if _observe.observers:
                        context.run(_observe.report, "finished", task, None, False)
                    quiet += 1
                    continue
                except BaseException as exc:
                    if _stops_the_run(exc):
                        raise
                    _fail(task, exc, failures)
                    continue
            # The task suspended: pass what it waits on to the loop, until it finishes.
            quiet = 0
            while True:
                try:
                    value = yield yielded
                except GeneratorExit:
                    context.run(current.close)
                    raise
                except BaseException as error:
                    # The loop threw `error` in (asyncio's cancellation of the run): it
                    # propagates, whatever the task turned it into.
                    try:
                        yielded = context.run(current.throw, error)
                    except StopIteration:  # it swallowed the error and returned
                        if _observe.observers:
                            context.run(_observe.report, "finished", task, None, False)
                        break
                    except BaseException as exc:
                        if exc is not error and isinstance(exc, Exception):
                            failures.append((task, exc))
                        raise error from None
                    continue
                try:
                    yielded = context.run(current.send, value)
                except StopIteration:
                    if _observe.observers:
                        context.run(_observe.report, "finished", task, None, False)
                    break
                except BaseException as exc:
                    if _stops_the_run(exc):
                        raise
                    _fail(task, exc, failures)
                    break
            task = None
    except BaseException as stop:
        if batch is not None:
            batch.stopped = True  # its worker starts no further task of it
            started = index + batch.started
            running = tasks[started - 1 : started] if batch.started else []
        else:
            started = index
            running = [task] if task is not None else []
            if task is not None and _observe.observers:
                task.context.run(_observe.report, "finished", task, stop, True)
        if holder._runs <= 1:  # no other run will get to the unclaimed ones
            end = holder._next = len(tasks)
        if log_unfinished:
            _log_unfinished(running, tasks[started:end])
        raise
    finally:
        holder._runs -= 1
        if not holder._runs:
            holder._closed = True  # a list that has run is closed: add_task would be lost
    if log and failures:
        log_failures(failures)


def _fail(task: BackgroundTask, exc: BaseException, failures: list[Failure]) -> None:
    failure = _as_failure(exc)
    failures.append((task, failure))
    if _observe.observers:
        task.context.run(_observe.report, "finished", task, failure, False)


def _stops_the_run(exc: BaseException) -> bool:
    # trio delivers cancellation as a value the task's own await raises, not by throwing it in;
    # only trio can create trio.Cancelled, so one is always a cancellation of the run.
    # KeyboardInterrupt and SystemExit in async code mean "stop the process".
    if isinstance(exc, (KeyboardInterrupt, SystemExit)):
        return True
    trio = sys.modules.get("trio")
    return trio is not None and isinstance(exc, trio.Cancelled)


def _as_failure(exc: BaseException) -> Exception:
    if isinstance(exc, Exception):
        return exc
    error = RuntimeError(f"background task raised {exc!r}")
    error.__cause__ = exc
    return error


class BackgroundTask:
    """One call to make after the response: ``func(*args, **kwargs)``.

    * Dispatch: coroutine functions, partials of them and objects with an async ``__call__``
      are awaited on the event loop. Any other callable runs in a worker thread, under
      bgtasks' own thread budget (``current_thread_limiter``); if it returns an awaitable,
      that is awaited on the loop. In that thread, ``anyio.from_thread.run`` and
      ``run_sync`` reach the loop, as in an anyio worker thread.
    * Context: the task runs in a copy of the contextvars taken here, at creation, even when
      it is created in a worker thread. ``await task()`` may be repeated, even concurrently:
      each run gets its own copy, so no run sees another's changes.
    * ``await task()`` runs it once and raises whatever it raised (a BaseException that is not
      an Exception, wrapped in RuntimeError). Cancellation propagates, with a warning naming
      the task; a sync call already running in its thread cannot be interrupted and finishes.

    A non-callable or a generator function raises TypeError here, not later.
    """

    __slots__ = ("func", "args", "kwargs", "is_async", "context", "_name")
    func: Callable[..., Any]
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    is_async: bool
    context: contextvars.Context
    _name: str | None

    @overload
    def __init__(self, func: Callable[P, Any], /, *args: P.args, **kwargs: P.kwargs) -> None: ...
    @overload
    def __init__(self, *, func: Callable[..., Any], **kwargs: Any) -> None: ...
    # The second form's `func=` arrives in **kwargs: the positional-only `func` leaves a task
    # free to take a keyword argument named func.
    def __init__(self, func: Any = _MISSING, /, *args: Any, **kwargs: Any) -> None:  # type: ignore[misc]
        if func is _MISSING:
            func = _func_by_keyword(kwargs, type(self).__name__)
        self.is_async = _classify(func, type(self).__name__)
        self.func = func
        self.args = args
        self.kwargs = kwargs
        self.context = _copy_context()  # the snapshot the task will run in
        self._name = None

    @property
    def name(self) -> str:
        """``module.qualname`` of the callable (of the innermost function of a partial)."""
        if self._name is None:
            self._name = _name_of(self.func)
        return self._name

    def __repr__(self) -> str:
        return f"<BackgroundTask {self.name}>"

    async def __call__(self) -> None:
        failures = await self._run_logged()
        if failures:
            raise failures[0][1]

    async def _run_logged(self, log_unfinished: bool = True) -> list[Failure]:
        failures: list[Failure] = []
        await _drive(BackgroundTasks._of([self._copy()]), failures, log_unfinished)
        return failures

    def _copy(self) -> BackgroundTask:
        # A run of its own: the same call in a fresh copy of the add-time context.
        copy = object.__new__(BackgroundTask)
        copy.func, copy.args, copy.kwargs = self.func, self.args, self.kwargs
        copy.is_async, copy._name = self.is_async, self._name
        copy.context = self.context.copy()
        return copy


_NO_TASKS: tuple[BackgroundTask, ...] = ()
# Small ints are singletons in CPython: `concurrency is _ONE` is a cheap exact test for the int 1,
# which True and 1.0 (equal to it) fail, so they take the checked path.
_ONE = 1


class BackgroundTasks:
    """An ordered list of background tasks, run by ``await tasks()``.

    * Order: with ``concurrency=1`` (the default) tasks run one after another, in the order they
      were added, including tasks added while the list is running. Consecutive sync tasks share
      one thread hop.
    * ``concurrency=N`` runs up to N tasks at once, started in order, tasks added while running
      included.
    * At most once: every task runs once, however often or concurrently the list is awaited
      (or passed to several responses); a second await runs only tasks not yet started.
    * Single use: once a run has ended the list is closed, and ``add_task`` raises
      RuntimeError instead of adding a task that would never run. Make a new one.
    * Failure: a failing task never stops the others. After all have run, the call raises the
      task's own exception if one failed, or a flat ExceptionGroup of them if several did.
    * Cancellation propagates at once. One warning on the ``bgtasks`` logger names each task
      that was cancelled or never started.
    * As FastAPI's list: always truthy, even empty (``len()`` counts), ``.tasks`` lists the
      tasks, ``add_task(func=f, ...)`` works. README lists the differences that remain.
    """

    __slots__ = ("_tasks", "_next", "_runs", "_closed", "concurrency", "dispatcher", "_calls")

    def __init__(
        self,
        tasks: Iterable[BackgroundTask] | None = _NO_TASKS,
        *,
        concurrency: int = 1,
        dispatcher: Dispatcher | None = None,
    ) -> None:
        self._tasks: list[BackgroundTask] = []
        self._next = 0  # tasks[:_next] are claimed by a run
        self._runs = 0
        self._closed = False
        self._calls: list[Call] | None = None  # enqueued, not yet sent
        self.dispatcher = dispatcher
        self.concurrency = concurrency
        if tasks is _NO_TASKS and concurrency is _ONE and dispatcher is None:
            return  # BackgroundTasks(): on every request's path, nothing to check
        if type(concurrency) is not int:
            raise TypeError(f"concurrency must be an int, got {concurrency!r}")
        if concurrency < 1:
            raise ValueError(f"concurrency must be at least 1, got {concurrency}")
        if tasks is None:  # Starlette's default
            tasks = _NO_TASKS
        if not isinstance(tasks, Iterable) or isinstance(tasks, (str, bytes)):
            raise TypeError(
                f"tasks must be an iterable of BackgroundTask objects, got {tasks!r}; "
                f"for a concurrency limit pass it by name: BackgroundTasks(concurrency=4)"
            )
        if dispatcher is not None and not (
            callable(getattr(dispatcher, "send", None))
            and callable(getattr(dispatcher, "name_of", None))
        ):
            raise TypeError(
                f"dispatcher must implement bgtasks.dispatch.Dispatcher (name_of and send), "
                f"such as bgtasks.celery.CeleryDispatcher(celery_app); got {dispatcher!r}"
            )
        for task in tasks:
            if not isinstance(task, BackgroundTask):
                raise TypeError(
                    f"BackgroundTasks takes BackgroundTask objects, got {task!r}; wrap it as "
                    f"BackgroundTask(func, *args) or call add_task(func, *args)."
                )
            self._tasks.append(task._copy())  # the same task may sit in several lists

    @classmethod
    def _of(cls, tasks: list[BackgroundTask]) -> BackgroundTasks:
        holder = object.__new__(cls)
        holder.concurrency, holder._next, holder._runs, holder._closed = 1, 0, 0, False
        holder._tasks = tasks
        holder.dispatcher = holder._calls = None
        return holder

    def enqueue(self, func: Any, /, *args: Any, **kwargs: Any) -> Call:
        """Hand ``func(*args, **kwargs)`` to the distributed engine instead of running it here.

        ``func`` is the engine's task (a Celery task, a Procrastinate task). Under
        ``BackgroundTasksMiddleware(dispatcher=...)`` the call is sent only if the request
        succeeds, and before the client is told so; see the middleware. Directly, ``await
        tasks()`` sends the enqueued calls first and raises if the broker refused one. The
        contextvars are captured here and the call is sent in them. Raises RuntimeError when
        no dispatcher is configured, TypeError when ``func`` is not one of the engine's tasks.
        """
        dispatcher = self.dispatcher
        if dispatcher is None:
            raise RuntimeError(
                "enqueue needs a dispatcher: pass BackgroundTasksMiddleware(app, dispatcher=...) "
                "or BackgroundTasks(dispatcher=...), e.g. CeleryDispatcher(celery_app); to run "
                "the call in this process instead, use add_task"
            )
        if self._closed:
            raise RuntimeError(
                "enqueue on background tasks that have already run: the call would never be "
                "sent. Enqueue before the response is sent, or use a new BackgroundTasks()."
            )
        name = dispatcher.name_of(func)
        check = getattr(dispatcher, "check_call", None)  # optional: an engine's own rules
        if check is not None:
            check(func, args, kwargs)
        call = Call(func, args, kwargs, name)
        if self._calls is None:
            self._calls = []
        self._calls.append(call)
        if _observe.observers:
            _observe.report("added", call)
        return call

    def _take_calls(self) -> list[Call]:
        calls, self._calls = self._calls or [], None
        return calls

    @overload
    def add_task(
        self, func: Callable[P, Any], /, *args: P.args, **kwargs: P.kwargs
    ) -> BackgroundTask: ...
    @overload
    def add_task(self, *, func: Callable[..., Any], **kwargs: Any) -> BackgroundTask: ...
    def add_task(  # type: ignore[misc]  # func= arrives in **kwargs, as in __init__
        self, func: Any = _MISSING, /, *args: Any, **kwargs: Any
    ) -> BackgroundTask:
        """Append ``func(*args, **kwargs)`` and return its BackgroundTask.

        Safe to call from a running task, and from a sync endpoint in a worker thread. The
        contextvars are captured here. Raises TypeError for a non-callable or a generator
        function, and RuntimeError once the list has run (it is single use): Starlette's
        list would keep such a task and never run it.

        ``add_task(func=f, x=1)`` works as in Starlette. When ``func`` comes first by position,
        a ``func=`` keyword is an argument of the task itself.
        """
        if func is _MISSING:
            func = _func_by_keyword(kwargs, "add_task")
        # BackgroundTask(func, *args, **kwargs), inlined: add_task is on every request's path.
        task = object.__new__(BackgroundTask)
        task.is_async = _classify(func, "add_task")
        if self._closed:
            raise RuntimeError(
                f"add_task({_name_of(func)}) on background tasks that have already run: the "
                f"task would never run. Add tasks before the response is sent (or before "
                f"awaiting the list), or use a new BackgroundTasks()."
            )
        task.func = func
        task.args = args
        task.kwargs = kwargs
        task.context = _copy_context()  # the snapshot the task will run in
        task._name = None
        self._tasks.append(task)
        if _observe.observers:
            _observe.report("added", task)
        return task

    @property
    def tasks(self) -> tuple[BackgroundTask, ...]:
        """The tasks added so far, in order, each with ``func``, ``args``, ``kwargs`` and
        ``is_async``, as on Starlette's list. A snapshot to read; add with ``add_task``."""
        return tuple(self._tasks)

    def __len__(self) -> int:
        return len(self._tasks)

    def __bool__(self) -> bool:
        # Always true, as FastAPI's list is: `if background_tasks:` guards an optional
        # injection, and an empty list must not read as "no list".
        return True

    def __iter__(self) -> Iterator[BackgroundTask]:
        return iter(self._tasks)

    def __repr__(self) -> str:
        return f"<BackgroundTasks {[task.name for task in self._tasks]}>"

    async def __call__(self) -> None:
        if self._calls:
            await self._send_enqueued()
        failures = await self._run_logged()
        if len(failures) == 1:
            raise failures[0][1]
        if failures:
            raise ExceptionGroup(
                f"{len(failures)} background tasks failed", [exc for _, exc in failures]
            )

    async def _send_enqueued(self) -> None:
        # Direct use: send what was enqueued, and raise (naming the calls) if any was refused.
        assert self.dispatcher is not None
        calls = self._take_calls()
        refused = await send_enqueued(self, self.dispatcher, calls)
        if refused:
            raise RuntimeError(
                f"the broker refused {len(refused)} of {len(calls)} enqueued calls: "
                f"[{', '.join(call.name for call, _ in refused)}]"
            ) from refused[0][1]

    async def _run_logged(self) -> list[Failure]:
        # Runs every unclaimed task and returns the failures; the caller raises or logs them.
        failures: list[Failure] = []
        if self.concurrency == 1:
            await _drive(self, failures)
            return failures
        self._runs += 1
        try:
            await self._run_concurrently(failures)
        finally:
            self._end_run()
        return failures

    def _end_run(self) -> None:
        self._runs -= 1
        if not self._runs:
            self._closed = True

    def _close(self, reason: str) -> None:
        """Close the list without running it (its request failed); name what is dropped."""
        self._closed = True
        dropped = self._tasks[self._next :]
        self._next = len(self._tasks)
        _report_dropped(dropped, reason)
        if dropped:
            logger.warning(
                "%s; never started: [%s]", reason, ", ".join(task.name for task in dropped)
            )

    async def _run_concurrently(self, failures: list[Failure]) -> None:
        tasks = self._tasks
        indexed: list[tuple[int, Failure]] = []
        running: dict[int, BackgroundTask] = {}
        workers = 0

        def top_up() -> None:
            # Every task claimed has a worker; tasks added while running get workers too.
            nonlocal workers
            while workers < self.concurrency and self._next + workers - len(running) < len(
                tasks
            ):
                workers += 1
                group.start_soon(worker)

        async def worker() -> None:
            nonlocal workers
            try:
                while self._next < len(tasks):
                    index = self._next
                    self._next += 1
                    task = running[index] = tasks[index]
                    one = BackgroundTasks._of([task])
                    one_failures: list[Failure] = []
                    await _drive(one, one_failures, False)
                    indexed.extend((index, failure) for failure in one_failures)
                    del running[index]
                    top_up()
            finally:
                workers -= 1

        try:
            async with anyio.create_task_group() as group:
                top_up()
        except BaseException:
            never = tasks[self._next :]
            self._next = len(tasks)
            _log_unfinished(list(running.values()), never)
            raise
        indexed.sort(key=lambda item: item[0])
        failures.extend(failure for _, failure in indexed)


# For the middleware and the integrations: what they need of a request's list, so that no module
# reaches into another's private names.


def has_tasks(tasks: BackgroundTasks) -> bool:
    return bool(tasks._tasks)


def has_calls(tasks: BackgroundTasks) -> bool:
    """Calls are enqueued and not yet sent."""
    return bool(tasks._calls)


def take_calls(tasks: BackgroundTasks) -> list[Call]:
    """The enqueued calls, which the caller now sends or drops."""
    return tasks._take_calls()


def has_unstarted(tasks: BackgroundTasks) -> bool:
    return tasks._next < len(tasks._tasks)


def close(tasks: BackgroundTasks) -> None:
    """It will not run (it has nothing to run): a later add_task must raise."""
    tasks._closed = True


def refused_calls(
    calls: Sequence[Call], results: Sequence[BaseException | None]
) -> list[tuple[Call, BaseException]]:
    return [(call, error) for call, error in zip(calls, results, strict=True) if error is not None]


async def send_enqueued(
    tasks: BackgroundTasks, dispatcher: Dispatcher, calls: Sequence[Call]
) -> list[tuple[Call, BaseException]]:
    """Send ``calls``; return the refused ones. A dispatcher whose workers are this process
    (``run_here``) gives a task for each call it took, which joins ``tasks`` and so runs after
    the response, counted and drained with the request's own."""
    results = await send_calls(dispatcher, calls)
    run_here = getattr(dispatcher, "run_here", None)
    if run_here is not None:
        for call, error in zip(calls, results, strict=True):
            if error is None:
                tasks._tasks.append(run_here(call))
    return refused_calls(calls, results)


class Droppable:
    """Base of a task callable that must learn it will never run (an integration's record of
    the call, such as Django's task result): ``dropped`` is called, on the loop, with the
    reason the ``bgtasks`` logger gives. It must not raise."""

    def dropped(self, reason: str) -> None:
        raise NotImplementedError


def _report_dropped(tasks: Sequence[BackgroundTask], reason: str) -> None:
    for task in tasks:
        if _observe.observers:
            _observe.report("dropped", task, reason)
        if isinstance(task.func, Droppable):
            task.func.dropped(reason)


def _log_unfinished(
    cancelled: Sequence[BackgroundTask], never_started: Sequence[BackgroundTask]
) -> None:
    _report_dropped(never_started, "the run was cancelled before it started")
    if cancelled or never_started:
        logger.warning(
            "background tasks did not finish; cancelled: [%s]; never started: [%s]",
            ", ".join(task.name for task in cancelled),
            ", ".join(task.name for task in never_started),
        )


def task_names(background: Callable[[], Awaitable[Any]]) -> list[str]:
    if isinstance(background, BackgroundTasks):
        return [task.name for task in background]
    if isinstance(background, BackgroundTask):
        return [background.name]
    return [_name_of(background)]


def log_dropped(background: Callable[[], Awaitable[Any]], reason: str) -> None:
    if isinstance(background, BackgroundTasks):
        background._close(reason)
        return
    logger.warning("%s; never started: [%s]", reason, ", ".join(task_names(background)))


def log_failures(failures: list[Failure]) -> None:
    for task, error in failures:
        logger.error("background task %s failed", task.name, exc_info=error)


def run_tasks(tasks: BackgroundTasks) -> Awaitable[None]:
    """Run a BackgroundTasks in this task, inline, and log (never raise) what failed."""
    rest = run_ready(tasks)
    return _DONE if rest is None else rest


def run_ready(tasks: BackgroundTasks) -> Awaitable[None] | None:
    """``run_tasks``, with its common case done at once: the async tasks at the head of the
    list that finish in their first step run here, before this returns, and no driver is
    made for them. Returns None when that was all of them, else what runs the rest, which
    the caller awaits at once, in the same task (a first step already taken continues there).
    """
    if tasks.concurrency != 1:
        return _run_concurrently_logged(tasks)
    if _observe.observers or tasks._runs:
        return _drive(tasks, None)
    pending = tasks._tasks
    quiet = 0  # tasks finished in a row without suspending
    tasks._runs = 1  # a task that awaits this list meanwhile knows a run holds its head
    try:
        while True:
            index = tasks._next
            if index >= len(pending):
                tasks._closed = True  # it has run: add_task would be lost
                return None
            task = pending[index]
            if not task.is_async or quiet >= _CHECKPOINT_EVERY:
                return _drive(tasks, None, True, index, index, quiet=quiet)
            tasks._next = index + 1
            try:
                kwargs = task.kwargs
                coroutine = task.func(*task.args, **kwargs) if kwargs else task.func(*task.args)
                if type(coroutine) is not _Coroutine:
                    return _drive(tasks, None, True, index + 1, index + 1, coroutine, quiet=quiet)
                yielded = task.context.run(coroutine.send, None)
            except StopIteration:
                quiet += 1
                continue
            except BaseException as exc:  # the driver files it, as if it had raised there
                return _drive(tasks, None, True, index + 1, index + 1, _Raise(exc), quiet=quiet)
            return _drive(tasks, None, True, index + 1, index + 1, coroutine, [yielded])
    finally:
        tasks._runs = 0


class _Done(tuple):  # type: ignore[type-arg]
    # An awaitable that is already done, for the price of iterating an empty tuple.
    __slots__ = ()
    __await__ = tuple.__iter__


_DONE: Awaitable[None] = _Done()  # type: ignore[assignment]


class _Raise:
    # An awaitable whose first step raises `error`: hands a failure to the driver.
    __slots__ = ("error",)

    def __init__(self, error: BaseException) -> None:
        self.error = error

    def __await__(self) -> _Raise:
        return self

    def send(self, value: object) -> NoReturn:
        raise self.error


async def _run_concurrently_logged(tasks: BackgroundTasks) -> None:
    log_failures(await tasks._run_logged())


async def run_background(background: Callable[[], Awaitable[Any]]) -> None:
    """Run a response's background and log, never raise, what failed in it."""
    if isinstance(background, BackgroundTasks):
        await run_tasks(background)
        return
    if isinstance(background, BackgroundTask):
        log_failures(await background._run_logged())
        return
    [name] = task_names(background)
    try:
        await background()
    except Exception as exc:
        logger.error("background task %s failed", name, exc_info=exc)
    except BaseException:
        logger.warning("background %s was cancelled before it finished", name)
        raise


class Run(Job):
    """A BackgroundTasks handed to the engine: one request's work, run once, in order."""

    __slots__ = ("tasks", "index", "end", "awaitable")

    def __init__(self, tasks: BackgroundTasks) -> None:
        Job.__init__(self)
        self.tasks = tasks
        self.index = self.end = 0  # claimed by the thread batch: tasks[index:end]
        self.awaitable: Any = None  # returned there by tasks[index - 1]

    def sync_calls(self) -> Sequence[BackgroundTask] | None:
        tasks = self.tasks
        if tasks.concurrency != 1:
            return None
        start = tasks._next
        calls = tasks._tasks[start:]
        for task in calls:
            if task.is_async:
                return None
        self.index = start
        self.end = tasks._next = len(tasks._tasks)
        return calls

    def batch_done(self, batch: SyncBatch) -> bool:
        if batch.errors:
            log_failures(batch.errors)
        self.index += batch.started
        self.awaitable = batch.awaitable
        # Finished, unless a task returned an awaitable or added tasks while it ran.
        return self.awaitable is None and self.tasks._next >= len(self.tasks._tasks)

    async def run(self) -> None:
        tasks = self.tasks
        if self.awaitable is None and self.index == self.end:  # not resumed after a batch
            rest = run_ready(tasks)
            if rest is not None:
                await rest
        else:
            await _drive(tasks, None, True, self.index, self.end, self.awaitable)

    def settle(self) -> None:
        if not self.tasks._runs:
            self.tasks._closed = True  # it has run: a late add_task would be lost
        Job.settle(self)

    def abandon(self, reason: str) -> None:
        tasks = self.tasks._tasks
        batch = self.batch
        started = self.index + (batch.started if batch is not None else 0)
        running = tasks[started - 1 : started] if batch is not None and batch.started else []
        self.tasks._next = len(tasks)
        _report_dropped(tasks[started:], reason)
        logger.warning(
            "%s; cancelled: [%s]; never started: [%s]",
            reason,
            ", ".join(task.name for task in running),
            ", ".join(task.name for task in tasks[started:]),
        )
