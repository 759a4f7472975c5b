"""The lease loop: what keeps a process's calls its own, and finds the calls nobody runs.

Rules:

1. A process is named by its owner string, ``host:pid:token``; the token is new in every
   process, so a forked worker is never taken for its parent.
2. Every ``tick`` seconds (the shorter of ``poll_interval`` and a third of ``lease``), one
   worker thread renews the leases of the calls whose attempts run in this process now (not
   of one given up by a drain or a server's cancellation: its lease runs out), then claims calls of
   registered names that are due (a retry whose wait is over) or whose lease ran out (their
   process died, or stalled longer than a lease), up to the room the process has.
3. A call held by a process on this host that no longer exists (SIGKILL, the OOM killer) is
   claimable at once: its lease is cut short. A process elsewhere, or a live one, keeps its
   lease. So the first tick of a restarted process, at startup, takes over what its dead
   predecessor held.
4. The loop runs on the event loop as a long-lived task (an asyncio task, a trio system task),
   one per dispatcher and event loop, started by lifespan or by the first call written; the
   check-ins come from the loop, so a process whose loop hangs loses its leases.
5. A name in the file that this process has not registered is named once, in a warning, and
   left alone: the file never makes a process import or call anything.
"""

from __future__ import annotations

import contextvars
import os
import socket
import time
import uuid
from collections.abc import Callable, Sequence
from typing import Any

import anyio

from .._engine import current_engine, current_thread_limiter
from ..tasks import logger
from ._journal import Journal, Row

_host = socket.gethostname()
_owner: tuple[int, str] = (-1, "")


def process_owner() -> str:
    """This process's name in the file."""
    global _owner
    pid = os.getpid()
    if _owner[0] != pid:
        _owner = (pid, f"{_host}:{pid}:{uuid.uuid4().hex[:12]}")
    return _owner[1]


def is_dead(owner: str) -> bool:
    """True only when ``owner`` was a process of this host that exists no more."""
    parts = owner.split(":")
    if len(parts) < 3:
        return False
    host, pid_text = ":".join(parts[:-2]), parts[-2]
    if host != _host or not pid_text.isdigit():
        return False
    pid = int(pid_text)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    try:  # killed but not yet reaped by its parent: a zombie runs nothing
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rpartition(")")[2].split()[0] == "Z"
    except (OSError, IndexError):
        return False


class Lease:
    """The loop of one dispatcher in this process."""

    def __init__(
        self,
        journal: Journal,
        lease: float,
        tick: float,
        names: Callable[[], Sequence[str]],
        room: Callable[[], int],
        claimed: Callable[[list[Row]], None],
        running: set[int],
    ) -> None:
        self.journal = journal
        self.lease = lease
        self.tick = tick
        self.names = names
        self.room = room
        self.claimed = claimed
        self.running = running  # ids of the calls whose attempts run in this process now
        self.warned: set[str] = set()
        self.loop_key: object = None  # the event loop the loop runs on
        self.scope: anyio.CancelScope | None = None
        self.task: Any = None  # keeps the asyncio task alive

    def start(self) -> None:
        """Start the loop on the running event loop, unless it runs there already."""
        engine = current_engine()
        if self.loop_key is engine.key:
            return
        self.loop_key = engine.key
        context = contextvars.Context()  # a request's contextvars never leak into the loop
        if engine.loop is not None:
            self.task = context.run(engine.loop.create_task, self._serve())
        else:
            import trio

            trio.lowlevel.spawn_system_task(self._serve, context=context)

    def stop(self) -> None:
        if self.scope is not None:
            self.scope.cancel()
        self.loop_key = self.scope = self.task = None

    async def _serve(self) -> None:
        with anyio.CancelScope() as scope:
            self.scope = scope
            limiter = current_thread_limiter()
            while True:
                try:
                    rows = await anyio.to_thread.run_sync(self.step, limiter=limiter)
                except Exception:
                    logger.exception(
                        "bgtasks.sqlite could not renew its leases or claim calls in %s; it "
                        "tries again in %ss",
                        self.journal.path,
                        self.tick,
                    )
                else:
                    if rows:
                        self.claimed(rows)
                await anyio.sleep(self.tick)

    def step(self) -> list[Row]:
        """One tick, in a worker thread: renew, reclaim the dead's calls, claim what is due."""
        journal = self.journal
        owner = process_owner()
        now = time.time()
        running = set(self.running)  # a copy: attempts end in other threads meanwhile
        journal.renew(owner, now + self.lease, sorted(running))
        dead = [other for other in journal.other_owners(owner) if is_dead(other)]
        if dead:
            logger.warning(
                "bgtasks.sqlite: processes %s died holding calls in %s; they are claimed now",
                ", ".join(dead),
                journal.path,
            )
            journal.expire(dead)
        names = self.names()
        unknown = set(journal.names()) - set(names) - self.warned
        if unknown:
            self.warned |= unknown
            logger.warning(
                "bgtasks.sqlite: %s holds calls of tasks this process has not registered, left "
                "in place for a process that has: [%s]",
                journal.path,
                ", ".join(sorted(unknown)),
            )
        return journal.claim(names, owner, now, now + self.lease, self.room(), running)
