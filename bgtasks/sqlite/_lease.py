"""The lease loop: what keeps a process's calls its own, and finds the calls nobody runs.

Rules:

1. A process is named by its owner string, ``host:pid:token``; the token is new in every
   process, so a forked worker is never taken for its parent.
2. Every ``tick`` seconds (the shorter of ``poll_interval`` and a third of ``lease``), one
   worker thread renews the leases of the calls whose attempts run in this process now (not
   of one given up by a drain or a server's cancellation: its lease runs out), then claims
   calls of registered names that are due (a retry whose wait is over) or whose lease ran out
   (their process died, or stalled longer than a lease), up to the room the process has.
3. A call held by a process on this host that no longer exists (SIGKILL, the OOM killer) is
   claimable at once: its lease is cut short. Whether it exists is told by a lock it held
   (``Liveness``), not by its PID. A process elsewhere, or a live one, keeps its lease. So the
   first tick of a restarted process, at startup, takes over what its dead predecessor held.
4. The loop runs on the event loop as a long-lived task (an asyncio task, a trio system task),
   one per dispatcher and event loop, started by lifespan or by the first call written; the
   check-ins come from the loop, so a process whose loop hangs loses its leases.
5. A name in the file that this process has not registered is named once, in a warning, and
   left alone: the file never makes a process import or call anything.
"""

from __future__ import annotations

import contextlib
import contextvars
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from typing import Any

import anyio

from .._engine import current_engine, current_thread_limiter
from ..tasks import logger
from ._journal import Journal, Row

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

_host = socket.gethostname()
_owner: tuple[int, str] = (-1, "")


def process_owner() -> str:
    """This process's name in the file."""
    global _owner
    pid = os.getpid()
    if _owner[0] != pid:
        _owner = (pid, f"{_host}:{pid}:{uuid.uuid4().hex[:12]}")
    return _owner[1]


# The lock each process holds, per owners' directory: (pid, the open lock file).
_held: dict[str, tuple[int, Any]] = {}
_taking = threading.Lock()  # the first write and the first tick may race to take it


class Liveness:
    """Which owners of one file are alive: each process holds an exclusive ``flock`` on a
    file of its own beside the database (``<path>.owners/<token>``) for as long as it lives,
    and the kernel lets go of it when the process dies, however it dies. So a lock that can
    be taken belongs to a dead process: a zombie, a process in another PID namespace and a
    reused PID are all told apart. Without ``fcntl`` (Windows) every owner counts as alive,
    and leases alone decide."""

    def __init__(self, path: str) -> None:
        self.directory = f"{path}.owners"

    @property
    def held(self) -> bool:
        return _held.get(self.directory, (-1, None))[0] == os.getpid()

    def hold(self) -> None:
        """Take this process's lock on the file, once per process (a forked child takes its
        own), however many dispatchers of the process share the file."""
        if fcntl is None or self.held:
            return
        with _taking:
            if self.held:
                return
            os.makedirs(self.directory, exist_ok=True)
            token = process_owner().rpartition(":")[2]
            lock = open(os.path.join(self.directory, token), "a")  # noqa: SIM115 - for life
            fcntl.flock(lock.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            _held[self.directory] = (os.getpid(), lock)

    def is_dead(self, owner: str) -> bool:
        """True only when ``owner``, a process of this host, has died: its lock is free."""
        host, _, token = owner.rpartition(":")
        if fcntl is None or host.rpartition(":")[0] != _host or not token.isalnum():
            return False
        path = os.path.join(self.directory, token)
        try:
            with open(path, "a") as lock:
                fcntl.flock(lock.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False  # held: alive
        except OSError:
            return False  # no lock file (yet): the lease decides
        return True

    def forget(self, owner: str) -> None:
        """The owner's calls were taken over: its lock file can go."""
        with contextlib.suppress(OSError):
            os.unlink(os.path.join(self.directory, owner.rpartition(":")[2]))

    def sweep(self) -> None:
        """Remove the lock files of every dead process (at startup: files of processes that
        died holding nothing are never looked at otherwise)."""
        with contextlib.suppress(OSError):
            for token in os.listdir(self.directory):
                owner = f"{_host}:0:{token}"
                if token.isalnum() and self.is_dead(owner):
                    self.forget(owner)


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
        self.liveness = Liveness(journal.path)
        self.swept = -1  # the process that removed dead processes' lock files
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
        liveness = self.liveness
        if self.swept != os.getpid():  # this process's first tick: its startup
            liveness.hold()
            liveness.sweep()
            self.swept = os.getpid()
        dead = [other for other in journal.other_owners(owner) if liveness.is_dead(other)]
        if dead:
            logger.warning(
                "bgtasks.sqlite: processes %s died holding calls in %s; they are claimed now",
                ", ".join(dead),
                journal.path,
            )
            journal.expire(dead)
            for other in dead:
                liveness.forget(other)
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
