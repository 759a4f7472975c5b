"""bgtasks: run work after the ASGI response has been sent, on any server and framework."""

from ._threads import current_thread_limiter
from .response import Response
from .tasks import BackgroundTask, BackgroundTasks

__all__ = ["BackgroundTask", "BackgroundTasks", "Response", "current_thread_limiter"]
