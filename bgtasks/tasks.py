"""BackgroundTask and BackgroundTasks: dispatch, order, context, failure and cancellation.

Theory of operation:

* A task is classified once, when it is created. Coroutine functions, partials of them (nested
  too) and objects with an async ``__call__`` are *async*: they are awaited on the event loop.
  Every other callable is *sync*: it runs in a worker thread (see ``_engine``). A sync callable
  that returns an awaitable (``lambda: notify(x)``) has that awaitable awaited on the loop.
* A task snapshots the contextvars when it is created, like ``loop.call_soon``. Async tasks run
  in that snapshot without a new task: ``_run_in_order`` steps each coroutine inside
  ``Context.run``, which is what asyncio does for every Task step, for the price of a call.
* ``BackgroundTasks`` walks its list by index, so tasks added while it runs (even by a running
  task) run too, in the order they were added. Consecutive sync tasks share one thread hop.
* A task's ``Exception`` is kept and the next task runs. Only after the last one does the call
  raise: the exception itself when one task failed, a flat ExceptionGroup when several did.
* Anything else (cancellation, KeyboardInterrupt) propagates at once; before it does, one
  warning on the ``bgtasks`` logger names every task that was cancelled or never started.
"""

from __future__ import annotations

import contextvars
import functools
import inspect
import logging
import sys
import types
from collections.abc import Awaitable, Callable, Generator, Iterable, Iterator, Sequence
from typing import Any, NoReturn, ParamSpec

import anyio

from ._engine import Job, SyncBatch

if sys.version_info < (3, 11):  # pragma: no cover
    from exceptiongroup import ExceptionGroup

__all__ = ["BackgroundTask", "BackgroundTasks"]

P = ParamSpec("P")

logger = logging.getLogger("bgtasks")

Failure = tuple["BackgroundTask", Exception]
_Coroutine = types.CoroutineType


def _unwrap(func: object) -> object:
    while isinstance(func, functools.partial):
        func = func.func
    return func


def _unwrap_method(func: object) -> object:
    return getattr(func, "__func__", func)


def _is_async_callable(func: object) -> bool:
    kind = type(func)
    if kind is types.FunctionType or kind is types.MethodType:  # the common case, fast
        code = func.__code__  # type: ignore[attr-defined]
        if code.co_flags & inspect.CO_COROUTINE:
            return True
        # Python 3.12's inspect.markcoroutinefunction marks sync functions that return
        # coroutines; only then is the slow check needed.
        return hasattr(
            _unwrap_method(func), "_is_coroutine_marker"
        ) and inspect.iscoroutinefunction(func)
    func = _unwrap(func)
    if inspect.iscoroutinefunction(func):
        return True
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


def reject_non_callable(func: object, where: str) -> NoReturn:
    if inspect.iscoroutine(func):
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
def _run_in_order(
    tasks: list[BackgroundTask],
    failures: list[Failure],
    log_unfinished: bool = True,
    start: int = 0,
    awaitable: Any = None,
) -> Generator[Any, Any, None]:
    # The one place tasks run. A generator-based coroutine, so that it can step each task's
    # coroutine inside the task's own context: what a step yields goes to the event loop
    # unchanged, and what the loop sends or throws back goes in unchanged, so this works on
    # asyncio and trio alike and costs no new task. The list is walked by index, so tasks
    # appended while it runs are run too.
    index = start  # tasks[:index] have been started
    batch: SyncBatch | None = None
    try:
        while index < len(tasks) or awaitable is not None:
            if awaitable is not None:  # returned by tasks[index - 1], a sync task
                task = tasks[index - 1]
                context = task.context
            elif tasks[index].is_async:
                task = tasks[index]
                context = task.context
                index += 1
                try:
                    # Calling an async callable only creates its coroutine: no user code runs
                    # yet, so this needs no context. Its steps run in the context, below.
                    awaitable = task.func(*task.args, **task.kwargs)
                except Exception as exc:
                    failures.append((task, exc))
                    continue
            else:
                end = index + 1
                while end < len(tasks) and not tasks[end].is_async:
                    end += 1
                batch = SyncBatch(tasks[index:end])
                yield from batch.start().__await__()
                if batch.errors:
                    failures.extend(batch.errors)
                index += batch.started
                awaitable = batch.awaitable  # returned by tasks[index - 1], the batch's last
                batch = None
                continue
            iterator: Any = awaitable if type(awaitable) is _Coroutine else awaitable.__await__()
            awaitable = None
            value: Any = None
            error: BaseException | None = None
            while True:
                try:
                    if error is None:
                        yielded = context.run(iterator.send, value)
                    else:
                        yielded = context.run(iterator.throw, error)
                except StopIteration:
                    break
                except Exception as exc:
                    failures.append((task, exc))
                    break
                try:
                    value = yield yielded
                    error = None
                except GeneratorExit:
                    context.run(iterator.close)
                    raise
                except BaseException as exc:
                    value, error = None, exc
    except BaseException:
        if batch is not None:
            batch.stopped = True  # its worker starts no further task of it
        if log_unfinished:
            # Cancellation arrives at a yield: while tasks[index - 1] (async, or the awaitable
            # a sync task returned) runs, or while a sync batch waits; of that batch only the
            # last task it started can still be running, the ones before it have finished.
            if batch is None:
                started = index
                running = tasks[index - 1 : index] if index else []
            else:
                started = index + batch.started
                running = tasks[started - 1 : started] if batch.started else []
            _log_unfinished(running, tasks[started:])
        raise


class BackgroundTask:
    """One call to make after the response: ``func(*args, **kwargs)``.

    * Dispatch: coroutine functions, partials of them and objects with an async ``__call__``
      are awaited on the event loop. Any other callable runs in a worker thread, under
      bgtasks' own thread budget (``current_thread_limiter``); if it returns an awaitable,
      that is awaited on the loop.
    * Context: the task runs in a copy of the contextvars taken here, at creation, even when
      it is created in a worker thread.
    * ``await task()`` runs it once and raises whatever it raised. Cancellation propagates,
      with a warning naming the task; a sync call already running in its thread cannot be
      interrupted and finishes there.

    A non-callable raises TypeError here, not later.
    """

    __slots__ = ("func", "args", "kwargs", "is_async", "context", "_name")
    func: Callable[..., Any]
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    is_async: bool
    context: contextvars.Context
    _name: str | None

    def __init__(self, func: Callable[P, Any], /, *args: P.args, **kwargs: P.kwargs) -> None:
        if not callable(func):
            reject_non_callable(func, type(self).__name__)
        _fill(self, func, args, kwargs)

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
        await _run_in_order([self], failures, log_unfinished)
        return failures


def _fill(
    task: BackgroundTask, func: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
) -> BackgroundTask:
    task.func = func
    task.args = args
    task.kwargs = kwargs
    task.is_async = _is_async_callable(func)
    task.context = contextvars.copy_context()  # the snapshot the task will run in
    task._name = None
    return task


class BackgroundTasks:
    """An ordered list of background tasks, run by ``await tasks()``.

    * Order: with ``concurrency=1`` (the default) tasks run one after another, in the order they
      were added, including tasks added while the list is running. Consecutive sync tasks share
      one thread hop.
    * ``concurrency=N`` runs up to N tasks at once, started in order.
    * Failure: a failing task never stops the others. After all have run, the call raises the
      task's own exception if one failed, or a flat ExceptionGroup of them if several did.
    * Cancellation propagates at once. One warning on the ``bgtasks`` logger names each task
      that was cancelled or never started.
    """

    __slots__ = ("_tasks", "concurrency")

    def __init__(self, tasks: Iterable[BackgroundTask] = (), *, concurrency: int = 1) -> None:
        if type(concurrency) is not int:
            raise TypeError(f"concurrency must be an int, got {concurrency!r}")
        if concurrency < 1:
            raise ValueError(f"concurrency must be at least 1, got {concurrency}")
        self.concurrency = concurrency
        self._tasks: list[BackgroundTask] = []
        if tasks:
            self._tasks.extend(tasks)
        for task in self._tasks:
            if not isinstance(task, BackgroundTask):
                raise TypeError(
                    f"BackgroundTasks takes BackgroundTask objects, got {task!r}; wrap it as "
                    f"BackgroundTask(func, *args) or call add_task(func, *args)."
                )

    def add_task(
        self, func: Callable[P, Any], /, *args: P.args, **kwargs: P.kwargs
    ) -> BackgroundTask:
        """Append ``func(*args, **kwargs)`` and return its BackgroundTask.

        Safe to call from a running task, and from a sync endpoint in a worker thread. The
        contextvars are captured here.
        """
        if not callable(func):
            reject_non_callable(func, "add_task")
        # BackgroundTask(func, *args, **kwargs) without packing the arguments a second time:
        # add_task is on every request's path.
        task = _fill(object.__new__(BackgroundTask), func, args, kwargs)
        self._tasks.append(task)
        return task

    def __len__(self) -> int:
        return len(self._tasks)

    def __iter__(self) -> Iterator[BackgroundTask]:
        return iter(self._tasks)

    def __repr__(self) -> str:
        return f"<BackgroundTasks {[task.name for task in self._tasks]}>"

    async def __call__(self) -> None:
        failures = await self._run_logged()
        if len(failures) == 1:
            raise failures[0][1]
        if failures:
            raise ExceptionGroup(
                f"{len(failures)} background tasks failed", [exc for _, exc in failures]
            )

    async def _run_logged(self) -> list[Failure]:
        # Runs every task and returns the failures; the caller raises or logs them.
        failures: list[Failure] = []
        if self.concurrency == 1:
            await _run_in_order(self._tasks, failures)
        else:
            await self._run_concurrently(failures)
        return failures

    async def _run_concurrently(self, failures: list[Failure]) -> None:
        tasks = self._tasks
        indexed: list[tuple[int, Failure]] = []
        running: dict[int, BackgroundTask] = {}
        next_index = 0

        async def worker() -> None:
            nonlocal next_index
            while next_index < len(tasks):
                index = next_index
                next_index += 1
                task = running[index] = tasks[index]
                indexed.extend((index, failure) for failure in await task._run_logged(False))
                del running[index]

        try:
            async with anyio.create_task_group() as group:
                for _ in range(min(self.concurrency, len(tasks))):
                    group.start_soon(worker)
        except BaseException:
            _log_unfinished(list(running.values()), tasks[next_index:])
            raise
        indexed.sort(key=lambda item: item[0])
        failures.extend(failure for _, failure in indexed)


def _log_unfinished(
    cancelled: Sequence[BackgroundTask], never_started: Sequence[BackgroundTask]
) -> None:
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
    logger.warning("%s; never started: [%s]", reason, ", ".join(task_names(background)))


def log_failures(failures: list[Failure]) -> None:
    for task, error in failures:
        logger.error("background task %s failed", task.name, exc_info=error)


async def run_background(background: Callable[[], Awaitable[Any]]) -> None:
    """Run a response's background and log, never raise, what failed in it."""
    kind = type(background)
    if kind is BackgroundTasks or kind is BackgroundTask:
        if kind is BackgroundTasks and background.concurrency == 1:  # type: ignore[attr-defined]
            tasks: list[BackgroundTask] = background._tasks  # type: ignore[attr-defined]
            if not tasks:
                return
            failures: list[Failure] = []
            await _run_in_order(tasks, failures)
        else:
            failures = await background._run_logged()  # type: ignore[attr-defined]
        log_failures(failures)
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

    __slots__ = ("tasks", "resume_at", "awaitable")

    def __init__(self, tasks: BackgroundTasks) -> None:
        super().__init__()
        self.tasks = tasks
        self.resume_at = 0  # tasks[:resume_at] ran in the threads
        self.awaitable: Any = None  # returned there by tasks[resume_at - 1]

    def sync_calls(self) -> Sequence[BackgroundTask] | None:
        tasks = self.tasks
        if tasks.concurrency != 1:
            return None
        for task in tasks._tasks:
            if task.is_async:
                return None
        return tasks._tasks

    def batch_done(self, batch: SyncBatch) -> bool:
        if batch.errors:
            log_failures(batch.errors)
        self.resume_at = batch.started
        self.awaitable = batch.awaitable
        # Finished, unless a task returned an awaitable or added tasks while it ran.
        return self.awaitable is None and batch.started >= len(self.tasks._tasks)

    async def run(self) -> None:
        tasks = self.tasks
        failures: list[Failure] = []
        if self.resume_at or tasks.concurrency == 1:
            await _run_in_order(tasks._tasks, failures, True, self.resume_at, self.awaitable)
        else:
            failures = await tasks._run_logged()
        log_failures(failures)

    def abandon(self, reason: str) -> None:
        tasks = self.tasks._tasks
        batch = self.batch
        started = batch.started if batch is not None else self.resume_at
        running = tasks[started - 1 : started] if batch is not None and started else []
        logger.warning(
            "%s; cancelled: [%s]; never started: [%s]",
            reason,
            ", ".join(task.name for task in running),
            ", ".join(task.name for task in tasks[started:]),
        )
