"""BackgroundTask and BackgroundTasks: dispatch, order, context, failure and cancellation.

Theory of operation:

* A task is classified once, when it is created. Coroutine functions, partials of them (nested
  too) and objects with an async ``__call__`` are *async*: they are awaited on the event loop.
  Every other callable is *sync*: it runs in a worker thread (see ``_threads``). A sync callable
  that returns an awaitable (``lambda: notify(x)``) has that awaitable awaited on the loop.
* A task snapshots the contextvars when it is created, like ``loop.call_soon``. Async tasks run
  in that snapshot without a new task: ``_in_context`` steps the coroutine inside
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

from ._threads import SyncBatch

if sys.version_info < (3, 11):  # pragma: no cover
    from exceptiongroup import ExceptionGroup

__all__ = ["BackgroundTask", "BackgroundTasks"]

P = ParamSpec("P")

logger = logging.getLogger("bgtasks")

Failure = tuple[str, Exception]


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
def _in_context(
    context: contextvars.Context, awaitable: Awaitable[Any]
) -> Generator[Any, Any, Any]:
    # Drive `awaitable` one step at a time, each step inside `context`. What it yields goes to
    # the event loop unchanged, and what the loop sends or throws back goes in unchanged, so
    # this works on asyncio and trio alike and costs no new task.
    iterator: Any = awaitable if type(awaitable) is types.CoroutineType else awaitable.__await__()
    value: Any = None
    error: BaseException | None = None
    while True:
        try:
            if error is None:
                yielded = context.run(iterator.send, value)
            else:
                yielded = context.run(iterator.throw, error)
        except StopIteration as stop:
            return stop.value
        try:
            value = yield yielded
            error = None
        except GeneratorExit:
            context.run(iterator.close)
            raise
        except BaseException as exc:
            error = exc


class BackgroundTask:
    """One call to make after the response: ``func(*args, **kwargs)``.

    * Dispatch: coroutine functions, partials of them and objects with an async ``__call__``
      are awaited on the event loop. Any other callable runs in a worker thread, under
      bgtasks' own thread budget (``current_thread_limiter``); if it returns an awaitable,
      that is awaited on the loop.
    * Context: the task runs in a copy of the contextvars taken here, at creation, even when
      it is created in a worker thread.
    * ``await task()`` runs it once and raises whatever it raised. Cancellation propagates; a
      sync call already running in its thread cannot be interrupted and finishes there.

    A non-callable raises TypeError here, not later.
    """

    __slots__ = ("func", "args", "kwargs", "is_async", "context", "_name")

    def __init__(self, func: Callable[P, Any], /, *args: P.args, **kwargs: P.kwargs) -> None:
        if not callable(func):
            reject_non_callable(func, type(self).__name__)
        self.func = func
        self.args = args
        self.kwargs = kwargs
        self.is_async = _is_async_callable(func)
        self.context = contextvars.copy_context()
        self._name: str | None = None

    @property
    def name(self) -> str:
        """``module.qualname`` of the callable (of the innermost function of a partial)."""
        if self._name is None:
            self._name = _name_of(self.func)
        return self._name

    def __repr__(self) -> str:
        return f"<BackgroundTask {self.name}>"

    async def __call__(self) -> None:
        if self.is_async:
            await self._run_on_loop()
            return
        batch = SyncBatch((self,))
        await batch()
        if batch.errors:
            raise batch.errors[0][1]
        if batch.awaitable is not None:
            await _in_context(self.context, batch.awaitable)

    def _run_on_loop(self) -> Awaitable[Any]:
        return _in_context(self.context, self.context.run(self.func, *self.args, **self.kwargs))

    async def _run_logged(self) -> list[Failure]:
        try:
            await self()
        except Exception as exc:
            return [(self.name, exc)]
        except BaseException:
            logger.warning("background task cancelled before it finished: %s", self.name)
            raise
        return []


class BackgroundTasks:
    """An ordered list of background tasks, run by ``await tasks()``.

    * Order: with ``concurrency=1`` (the default) tasks run one after another, in the order they
      were added, including tasks added while the list is running. Consecutive sync tasks share
      one thread hop.
    * ``concurrency=N`` runs up to N tasks at once, started in order; each sync task then gets
      its own thread.
    * Failure: a failing task never stops the others. After all have run, the call raises the
      task's own exception if one failed, or a flat ExceptionGroup of them if several did.
    * Cancellation propagates at once. One warning on the ``bgtasks`` logger names each task
      that was cancelled or never started.
    """

    __slots__ = ("_tasks", "concurrency")

    def __init__(self, tasks: Iterable[BackgroundTask] = (), *, concurrency: int = 1) -> None:
        if isinstance(concurrency, bool) or not isinstance(concurrency, int):
            raise TypeError(f"concurrency must be an int, got {concurrency!r}")
        if concurrency < 1:
            raise ValueError(f"concurrency must be at least 1, got {concurrency}")
        self.concurrency = concurrency
        self._tasks: list[BackgroundTask] = list(tasks)
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
        task = BackgroundTask(func, *args, **kwargs)
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
        if self.concurrency == 1:
            return await self._run_in_order()
        return await self._run_concurrently()

    async def _run_in_order(self) -> list[Failure]:
        tasks = self._tasks
        failures: list[Failure] = []
        index = 0  # tasks[:index] are finished
        batch: SyncBatch | None = None
        try:
            while index < len(tasks):
                task = tasks[index]
                if task.is_async:
                    try:
                        await task._run_on_loop()
                    except Exception as exc:
                        failures.append((task.name, exc))
                    index += 1
                    continue
                end = index + 1
                while end < len(tasks) and not tasks[end].is_async:
                    end += 1
                batch = SyncBatch(tasks[index:end])
                await batch()
                failures.extend((failed.name, exc) for failed, exc in batch.errors)
                if batch.awaitable is not None:
                    task = tasks[index + batch.started - 1]
                    try:
                        await _in_context(task.context, batch.awaitable)
                    except Exception as exc:
                        failures.append((task.name, exc))
                index += batch.started
                batch = None
        except BaseException:
            # Only the last task a batch started can still be running; the ones before it
            # finished in the thread.
            started = index + (batch.started if batch else 1)
            _log_unfinished(tasks[max(index, started - 1) : started], tasks[started:])
            raise
        return failures

    async def _run_concurrently(self) -> list[Failure]:
        tasks = self._tasks
        failures: list[tuple[int, Failure]] = []
        running: dict[int, BackgroundTask] = {}
        next_index = 0

        async def worker() -> None:
            nonlocal next_index
            while next_index < len(tasks):
                index = next_index
                next_index += 1
                task = running[index] = tasks[index]
                try:
                    await task()
                except Exception as exc:
                    failures.append((index, (task.name, exc)))
                del running[index]

        try:
            async with anyio.create_task_group() as group:
                for _ in range(min(self.concurrency, len(tasks))):
                    group.start_soon(worker)
        except BaseException:
            _log_unfinished(list(running.values()), tasks[next_index:])
            raise
        failures.sort(key=lambda item: item[0])
        return [failure for _, failure in failures]


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


async def run_background(background: Callable[[], Awaitable[Any]]) -> None:
    """Run a response's background and log, never raise, what failed in it."""
    if type(background) is BackgroundTasks and not background._tasks:
        return
    if isinstance(background, (BackgroundTask, BackgroundTasks)):
        failures = await background._run_logged()
    else:
        [name] = task_names(background)
        try:
            await background()
            failures = []
        except Exception as exc:
            failures = [(name, exc)]
        except BaseException:
            logger.warning("background %s was cancelled before it finished", name)
            raise
    for name, error in failures:
        logger.error("background task %s failed", name, exc_info=error)
