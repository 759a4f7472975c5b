"""What tests of apps that use bgtasks need. Imports nothing beyond bgtasks itself."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any

from .dispatch import Call

__all__ = ["RecordingDispatcher"]


class RecordingDispatcher:
    """A Dispatcher that records each call it is handed and runs nothing.

    ``calls`` holds ``(name, args, kwargs)`` in the order the calls were sent; ``batches`` the
    size of each ``send``. The middleware's rules apply to it as to any engine: only the calls
    of requests that succeeded arrive. Set ``refuse`` to an exception to play a broker that is
    down: every call is refused with it, as a real engine's client would raise.
    """

    def __init__(self) -> None:
        self.calls: list[tuple[str, tuple[Any, ...], dict[str, Any]]] = []
        self.batches: list[int] = []
        self.refuse: BaseException | None = None
        self._lock = threading.Lock()

    def name_of(self, func: Any) -> str:
        """The engine task's own name if it has one (Celery's ``.name``), else module.qualname."""
        if not callable(func):
            raise TypeError(f"enqueue needs an engine task, got {func!r}")
        name = getattr(func, "name", None)
        if isinstance(name, str):
            return name
        return f"{getattr(func, '__module__', '?')}.{getattr(func, '__qualname__', repr(func))}"

    def send(self, calls: Sequence[Call]) -> list[BaseException | None]:
        with self._lock:
            self.batches.append(len(calls))
            if self.refuse is not None:
                return [self.refuse] * len(calls)
            self.calls.extend((call.name, call.args, call.kwargs) for call in calls)
        return [None] * len(calls)
