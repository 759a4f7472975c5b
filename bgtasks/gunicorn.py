"""bgtasks.gunicorn: a gunicorn worker whose background work drains within graceful_timeout.

``gunicorn -k bgtasks.gunicorn.UvicornWorker app:app``, in place of uvicorn-worker's own.

Rules:

1. The worker checks in with the arbiter from its event loop every ``_CHECK_IN`` seconds (or
   a quarter of ``--timeout``, if shorter), from start to exit, draining included. gunicorn's
   ``--timeout`` therefore never kills a worker that drains, and still kills one whose loop
   hangs. (uvicorn-worker's checks in only while uvicorn's main loop runs: once a worker starts
   to drain, ``--timeout`` later it is aborted, and its background work is lost unnamed.)
2. Every graceful end (recycling after ``--max-requests``, SIGTERM from the arbiter on ``HUP``,
   ``TTOU`` or its own SIGTERM) has a budget of ``--graceful-timeout`` less ``_MARGIN``,
   counted from the moment uvicorn starts to shut down. uvicorn waits for the connections and
   request calls up to the budget, then cancels them; bgtasks' drains are limited to what is
   left (``limit_shutdown``) and name what they give up. The worker exits by itself before the
   arbiter would kill it.
3. gunicorn's quick shutdown (SIGINT or SIGQUIT to the arbiter, which sends SIGQUIT to its
   workers) has a budget of zero: nothing is waited for, and everything still running is given
   up and named.
4. The settings are gunicorn's own: nothing new to set.

gunicorn and uvicorn-worker are imported here only: ``pip install 'asgi-bgtasks[gunicorn]'``.
"""

from __future__ import annotations

import asyncio
import signal
import socket
import sys
from typing import Any

from gunicorn.arbiter import Arbiter
from uvicorn.config import Config
from uvicorn.server import Server
from uvicorn_worker import UvicornWorker as _UvicornWorker

from .middleware import limit_shutdown

__all__ = ["UvicornWorker"]

_CHECK_IN = 1.0  # seconds between check-ins with the arbiter, at most
_MARGIN = 1.0  # seconds of graceful_timeout kept for the process to exit after its drain


class _Server(Server):
    """uvicorn's server, with the budget of rules 2 and 3 set as its shutdown begins."""

    def __init__(self, config: Config, graceful_timeout: float) -> None:
        super().__init__(config)
        self.graceful_timeout = graceful_timeout
        self.quick = False

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        budget = 0.0 if self.quick else max(0.0, self.graceful_timeout - _MARGIN)
        limit_shutdown(budget)
        self.config.timeout_graceful_shutdown = budget  # type: ignore[assignment]
        await super().shutdown(sockets)


class UvicornWorker(_UvicornWorker):  # type: ignore[misc]  # uvicorn-worker ships no types
    """uvicorn under gunicorn, draining its background work within ``graceful_timeout``.

    Use it as uvicorn-worker's ``UvicornWorker``: ``-k bgtasks.gunicorn.UvicornWorker``. It
    keeps telling the arbiter it is alive while it drains, gives the drain gunicorn's
    ``graceful_timeout`` (less one second to exit) on every graceful end, and exits by itself
    before gunicorn would kill it; the tasks it gives up are named on the ``bgtasks`` logger,
    one warning per task. A quick shutdown (SIGQUIT) waits for nothing and names what it
    abandons. It works with and without ``BackgroundTasksMiddleware``; without it, uvicorn
    cancels the requests still running (Starlette's and FastAPI's own tasks run inside them)
    once the budget is spent.
    """

    def _install_sigquit_handler(self) -> None:
        # uvicorn-worker's sets only gunicorn's flag, which uvicorn never reads.
        asyncio.get_running_loop().add_signal_handler(signal.SIGQUIT, self._quit)

    def _quit(self) -> None:
        server: _Server | None = getattr(self, "_bgtasks_server", None)
        limit_shutdown(0)
        if server is not None:
            server.quick = True
            server.should_exit = True

    async def _serve(self) -> None:
        self.config.app = self.wsgi
        server = self._bgtasks_server = _Server(self.config, float(self.cfg.graceful_timeout))
        self._install_sigquit_handler()
        check_in = asyncio.ensure_future(self._check_in())
        try:
            await server.serve(sockets=self.sockets)
        finally:
            check_in.cancel()
        if not server.started:
            sys.exit(Arbiter.WORKER_BOOT_ERROR)

    async def _check_in(self) -> None:
        timeout: Any = self.cfg.timeout
        interval = min(_CHECK_IN, timeout / 4) if timeout else _CHECK_IN
        while True:
            self.notify()
            await asyncio.sleep(interval)
