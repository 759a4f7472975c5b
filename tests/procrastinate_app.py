"""The Procrastinate app of the broker tests: one task that records its call in a file.

``BGTASKS_PG_DSN`` names the PostgreSQL database; ``BGTASKS_TEST_DIR`` the directory of side
effects. The web process defers through ``app`` (a sync connector); the worker runs
``worker_app`` (the async connector Procrastinate's worker needs).
"""

from __future__ import annotations

import os

import procrastinate
import psycopg_pool
import recording

DSN = os.environ.get("BGTASKS_PG_DSN", "postgresql://postgres@127.0.0.1:1/postgres")

app = procrastinate.App(connector=procrastinate.SyncPsycopgConnector(conninfo=DSN))
# Handed to ProcrastinateDispatcher: its timeout bounds how long a request waits for a database
# that is down before the client gets its 503.
pool = psycopg_pool.ConnectionPool(DSN, open=False, timeout=2)


@app.task(name="tests.record_pg")
def record(name: str, seconds: float = 0.0) -> None:
    """Record the call in ``BGTASKS_TEST_DIR`` after ``seconds`` of work (see recording.py)."""
    recording.record(name, seconds)


worker_app = app.with_connector(procrastinate.PsycopgConnector(conninfo=DSN))
