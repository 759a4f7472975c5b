"""Django's task framework, run after the response: ``bgtasks.django.BackgroundTasksBackend``.

Rules:

1. It is a backend for Django's own task API: ``django.tasks`` on Django 6, the
   ``django_tasks`` package (the same API) on Django 4.2 to 5.2; whichever is installed, Django's
   own first. ``my_task.enqueue(...)`` inside a request adds the call to that request's
   ``BackgroundTasks`` (``get_background_tasks()``, which needs ``BackgroundTasksMiddleware``
   around the ASGI application): it runs after the response, with every bgtasks guarantee.
2. The result is Django's ``TaskResult``, updated in place as the immediate backend does it:
   READY when enqueued, RUNNING, then SUCCESSFUL with the return value or FAILED with the
   error; Django's ``task_enqueued``, ``task_started`` and ``task_finished`` signals are sent.
   The exception of a failed task is also logged by bgtasks, by the task's name.
3. A call whose request fails (an exception, a status ``run_if`` refuses), or that is given up
   at shutdown, never runs: its result becomes FAILED with an error that says why (Django's
   statuses have no other word for "will never run"), and ``task_finished`` is sent. The
   ``bgtasks`` logger names it, as for any task.
4. Outside a request (a management command, a shell, a worker), ``enqueue`` raises
   ``InvalidTaskError``, which names the alternatives, unless the backend's ``OPTIONS`` say
   ``{"OUTSIDE_REQUEST": "immediate"}``: then it runs the task at once, in the caller, as
   Django's immediate backend would.
5. What Django's base backend validates (module-level functions, ``takes_context``, queues,
   priority, ``run_after``) is validated here too, at ``enqueue``. The flags say what it does:
   async task functions yes; ``run_after``, results from other processes, priorities no.

Django is imported here only; the rest of bgtasks never needs it.
"""

from __future__ import annotations

import traceback
from typing import TYPE_CHECKING, Any, cast

from django.utils import timezone
from django.utils.crypto import get_random_string

from .middleware import get_background_tasks
from .tasks import Droppable, logger

if TYPE_CHECKING:  # the types are the same in both; the checker reads the backport's
    from django_tasks import TaskContext, TaskResult, TaskResultStatus
    from django_tasks.backends.base import BaseTaskBackend
    from django_tasks.base import Task, TaskError
    from django_tasks.exceptions import InvalidTaskError
    from django_tasks.signals import task_enqueued, task_finished, task_started
else:
    try:  # Django 6
        from django.tasks import TaskContext, TaskResult, TaskResultStatus
        from django.tasks.backends.base import BaseTaskBackend
        from django.tasks.base import Task, TaskError
        from django.tasks.exceptions import InvalidTask as InvalidTaskError
        from django.tasks.signals import task_enqueued, task_finished, task_started
    except ImportError:  # Django 4.2 to 5.2, with the django-tasks package
        from django_tasks import TaskContext, TaskResult, TaskResultStatus
        from django_tasks.backends.base import BaseTaskBackend
        from django_tasks.base import Task, TaskError
        from django_tasks.exceptions import InvalidTaskError
        from django_tasks.signals import task_enqueued, task_finished, task_started

__all__ = ["BackgroundTasksBackend"]

_OUTSIDE = ("raise", "immediate")


def _set(result: TaskResult[Any], **fields: Any) -> None:
    # TaskResult is a frozen dataclass; Django's own backends update it the same way.
    for name, value in fields.items():
        object.__setattr__(result, name, value)


def _json(value: Any) -> Any:
    try:  # Django 6
        from django.utils.json import normalize_json
    except ImportError:
        from django_tasks.utils import normalize_json
    return normalize_json(value)


class _Call(Droppable):
    """One enqueued call, as a bgtasks task named after the task function."""

    def __init__(self, backend: BackgroundTasksBackend, result: TaskResult[Any]) -> None:
        self.backend = backend
        self.result = result
        func = result.task.func
        # bgtasks names a callable instance by these: its log lines name the task function.
        self.__module__ = func.__module__
        self.__qualname__ = func.__qualname__
        self.name = f"{func.__module__}.{func.__qualname__}"

    def __call__(self) -> Any:
        raise NotImplementedError

    def _arguments(self) -> tuple[tuple[Any, ...], dict[str, Any]]:
        result = self.result
        args = tuple(result.args)
        if result.task.takes_context:
            args = (TaskContext(task_result=result), *args)
        return args, dict(result.kwargs)

    def _started(self) -> None:
        now = timezone.now()
        _set(self.result, status=TaskResultStatus.RUNNING, started_at=now, last_attempted_at=now)
        self.result.worker_ids.append(self.backend.worker_id)
        task_started.send(type(self.backend), task_result=self.result)

    def _finished(self, value: Any = None, error: BaseException | None = None) -> None:
        # value: the return value, already normalized to JSON as Django's backends keep it.
        result = self.result
        if error is None:
            _set(result, _return_value=value, status=TaskResultStatus.SUCCESSFUL)
        else:
            kind = type(error)
            result.errors.append(
                TaskError(
                    exception_class_path=f"{kind.__module__}.{kind.__qualname__}",
                    traceback="".join(traceback.format_exception(error)),
                )
            )
            _set(result, status=TaskResultStatus.FAILED)
        _set(result, finished_at=timezone.now())
        task_finished.send(type(self.backend), task_result=result)

    def dropped(self, reason: str) -> None:
        try:
            self._finished(error=RuntimeError(f"never ran: {reason}"))
        except Exception:  # a signal receiver failed; the drop itself is logged by bgtasks
            logger.exception("recording that Django task %s never ran failed", self.name)


class _SyncCall(_Call):
    def __call__(self) -> None:  # in a bgtasks worker thread
        try:
            self._started()
            args, kwargs = self._arguments()
            value = _json(self.result.task.func(*args, **kwargs))
        except BaseException as error:
            self._finished(error=error)
            raise  # bgtasks logs it by name
        self._finished(value)


class _AsyncCall(_Call):
    async def __call__(self) -> None:  # on the event loop
        try:
            self._started()
            args, kwargs = self._arguments()
            value = _json(await self.result.task.func(*args, **kwargs))
        except BaseException as error:  # a cancellation too: it never finished
            self._finished(error=error)
            raise
        self._finished(value)


class BackgroundTasksBackend(BaseTaskBackend):
    """Run Django tasks after the response of the request that enqueued them.

    ``TASKS = {"default": {"BACKEND": "bgtasks.django.BackgroundTasksBackend"}}`` with
    ``application = BackgroundTasksMiddleware(get_asgi_application())`` in ``asgi.py``. See the
    module's rules for results, signals, failed requests and calls outside a request.
    """

    supports_async_task = True
    supports_defer = False
    supports_get_result = False
    supports_priority = False

    def __init__(self, alias: str, params: dict[str, Any]) -> None:
        super().__init__(alias, params)
        outside = self.options.get("OUTSIDE_REQUEST", "raise")
        if outside not in _OUTSIDE:
            raise ValueError(
                f"TASKS[{alias!r}]['OPTIONS']['OUTSIDE_REQUEST'] must be 'raise' or "
                f"'immediate', got {outside!r}"
            )
        self.outside_request = outside
        self.worker_id = get_random_string(32)

    def enqueue(self, task: Task[Any, Any], args: Any, kwargs: Any) -> TaskResult[Any]:
        """Add the call to the current request's tasks; see the module's rules."""
        self.validate_task(task)
        try:
            tasks = get_background_tasks()
        except RuntimeError:
            if self.outside_request == "raise":
                raise InvalidTaskError(
                    f"{task.module_path}.enqueue() ran outside an HTTP request, and backend "
                    f"{self.alias!r} (bgtasks.django.BackgroundTasksBackend) runs a request's "
                    f"tasks after its response. Enqueue from a view served through "
                    f"BackgroundTasksMiddleware(get_asgi_application()); elsewhere use another "
                    f"backend alias (task.using(backend='...'), e.g. Django's "
                    f"ImmediateBackend), or set OPTIONS {{'OUTSIDE_REQUEST': 'immediate'}} to "
                    f"run it at once there."
                ) from None
            tasks = None
        result: TaskResult[Any] = TaskResult(
            task=task,
            id=get_random_string(32),
            status=cast(TaskResultStatus, TaskResultStatus.READY),
            enqueued_at=None,
            started_at=None,
            last_attempted_at=None,
            finished_at=None,
            args=args,
            kwargs=kwargs,
            backend=self.alias,
            errors=[],
            worker_ids=[],
        )
        _set(result, enqueued_at=timezone.now())
        task_enqueued.send(type(self), task_result=result)
        call = (_AsyncCall if _is_async(task) else _SyncCall)(self, result)
        if tasks is not None:
            tasks.add_task(call)
        else:
            _run_at_once(call)
        return result

    async def aenqueue(self, task: Task[Any, Any], args: Any, kwargs: Any) -> TaskResult[Any]:
        """As ``enqueue``, which does no I/O: no thread hop, unlike the base backend's."""
        return self.enqueue(task, args, kwargs)


def _is_async(task: Task[Any, Any]) -> bool:
    import inspect

    return inspect.iscoroutinefunction(task.func)


def _run_at_once(call: _Call) -> None:
    # OUTSIDE_REQUEST = "immediate": in the caller, as Django's immediate backend does. A
    # failure is recorded in the result and logged, not raised, as there.
    try:
        if isinstance(call, _AsyncCall):
            from asgiref.sync import async_to_sync

            async_to_sync(call)()
        else:
            call()
    except Exception as error:
        logger.error("background task %s failed", call.name, exc_info=error)
