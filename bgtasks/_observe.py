"""The observer hook: what happens to every task, for tracing, metrics and tests.

Rules:

1. The engine and the task driver report here: a task was added, started, finished (with its
   error, or cancelled), or dropped without running (with the reason the ``bgtasks`` logger
   gives); and how long a request waited for room (``max_pending``).
2. With no observer registered every report is one truth test of ``observers``: the hot path
   pays nothing else.
3. ``started`` and ``finished`` are called in the task's own context (so a span started there is
   a child of the span current at ``add_task``) and in the thread that runs the task: a worker
   thread for sync tasks. Observers must be thread-safe.
4. An observer that raises is logged once, with its traceback, and never breaks a task, a
   response or another observer.
"""

from __future__ import annotations

from typing import Any

__all__ = ["Observer", "add_observer", "remove_observer"]


class Observer:
    """Subclass and override what you need; every method is a no-op here.

    ``task`` is the ``BackgroundTask`` (``.name``, ``.func``, ``.args``, ``.kwargs``) or, for
    ``enqueue``, the ``bgtasks.dispatch.Call`` (its ``.name`` is the engine's task name; it
    "starts" when it is sent and "finishes" when the broker acknowledged or refused it).
    """

    def added(self, task: Any) -> None:
        """``add_task`` or ``enqueue`` was called, in the caller's thread."""

    def started(self, task: Any) -> None:
        """The task is about to run, in its own context and thread."""

    def finished(self, task: Any, error: BaseException | None, cancelled: bool) -> None:
        """The task ended: ``error`` is what it raised, None if it succeeded; ``cancelled``
        when its run was cancelled while it ran (``error`` is then the cancellation)."""

    def dropped(self, task: Any, reason: str) -> None:
        """The task will never run: its request failed, or shutdown gave it up."""

    def waited(self, seconds: float) -> None:
        """A response was held ``seconds`` for room under ``max_pending``."""


observers: tuple[Observer, ...] = ()
_complained: set[int] = set()


def add_observer(observer: Observer) -> None:
    """Report every task of this process to ``observer`` from now on."""
    global observers
    if not isinstance(observer, Observer):
        raise TypeError(
            f"add_observer needs a bgtasks.Observer subclass instance, got {observer!r}"
        )
    observers = (*observers, observer)


def remove_observer(observer: Observer) -> None:
    """Stop reporting to ``observer``; ValueError if it was not added."""
    global observers
    if observer not in observers:
        raise ValueError(f"{observer!r} is not an observer of bgtasks")
    observers = tuple(o for o in observers if o is not observer)
    # Keyed by id(): a later observer may get this one's address once it is collected, and
    # must still have its first error logged.
    _complained.discard(id(observer))


def report(method: str, *args: Any) -> None:
    for observer in observers:
        try:
            getattr(observer, method)(*args)
        except Exception:
            if id(observer) not in _complained:
                _complained.add(id(observer))
                import logging

                logging.getLogger("bgtasks").error(
                    "bgtasks observer %r raised in %s; it is kept, and further errors of it "
                    "are not logged",
                    observer,
                    method,
                    exc_info=True,
                )
