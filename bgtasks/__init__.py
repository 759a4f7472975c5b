"""bgtasks: run work after the ASGI response has been sent, on any server and framework."""

from ._engine import current_thread_limiter
from ._types import ASGIApp, Message, Receive, Scope, Send
from .middleware import BackgroundTasksMiddleware, get_background_tasks
from .response import Response
from .tasks import BackgroundTask, BackgroundTasks

__all__ = [
    "ASGIApp",
    "BackgroundTask",
    "BackgroundTasks",
    "BackgroundTasksMiddleware",
    "Message",
    "Receive",
    "Response",
    "Scope",
    "Send",
    "current_thread_limiter",
    "get_background_tasks",
]
