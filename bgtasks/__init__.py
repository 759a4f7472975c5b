"""bgtasks: run work after the ASGI response has been sent, on any server and framework."""

from ._engine import current_thread_limiter
from .middleware import BackgroundTasksMiddleware, get_background_tasks
from .response import Response
from .tasks import BackgroundTask, BackgroundTasks

__all__ = [
    "BackgroundTask",
    "BackgroundTasks",
    "BackgroundTasksMiddleware",
    "Response",
    "current_thread_limiter",
    "get_background_tasks",
]
