"""bgtasks: run work after the ASGI response has been sent, on any server and framework."""

from ._engine import current_thread_limiter
from ._observe import Observer, add_observer, remove_observer
from ._types import ASGIApp, Message, Receive, Scope, Send
from .local import LocalDispatcher
from .middleware import BackgroundTasksMiddleware, get_background_tasks, limit_shutdown
from .response import Response
from .tasks import BackgroundTask, BackgroundTasks

__all__ = [
    "ASGIApp",
    "BackgroundTask",
    "BackgroundTasks",
    "BackgroundTasksMiddleware",
    "LocalDispatcher",
    "Message",
    "Observer",
    "Receive",
    "Response",
    "Scope",
    "Send",
    "add_observer",
    "current_thread_limiter",
    "get_background_tasks",
    "limit_shutdown",
    "remove_observer",
]
