"""The journal: every statement bgtasks runs against the SQLite file, and nothing else.

Rules:

1. One table, ``bgtasks_calls``. A row is a call that has not finished: ``queued`` (new to
   nobody, or a retry waiting for ``run_after``), ``running`` (held by ``owner`` until
   ``lease_until``) or ``failed`` (its last attempt failed; ``error`` holds the traceback). A
   finished call's row is deleted, so the file stays as large as the work outstanding.
2. Times are Unix seconds (``time.time()``): several processes read them.
3. Every write is one short transaction. A call is inserted already ``running`` under its
   writer's lease, so no other process takes it while the writer lives; the writer runs it
   once its response is complete.
4. Every change to a claimed row names its owner (``AND owner = ?``): a process whose lease
   ran out and was taken over cannot mark another process's attempt.
5. One connection per process, behind a lock: SQLite lets one writer in at a time anyway, and
   other processes wait up to ``_BUSY_TIMEOUT`` for the write lock. After a fork the child
   opens its own.
6. Successes are deleted in as few transactions as possible (``finish_later``): the next
   write of new calls takes them along, and one thread per process deletes what no write took
   within ``_LINGER`` seconds. An attempt never waits for a commit. A success not yet deleted
   when the process dies runs again: at least once, never lost. ``flush`` waits until every
   success queued so far is deleted.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
import time
from collections.abc import Iterable, Sequence
from typing import Any

_BUSY_TIMEOUT = 10.0  # seconds a write waits for another process's transaction
_WAL_LIMIT = 4 * 1024 * 1024  # bytes the write-ahead log is cut back to after a checkpoint
_PAGE_SIZE = 1024
_LINGER = 0.005  # seconds a success waits for a write of new calls to take it along

SCHEMA = """
CREATE TABLE IF NOT EXISTS bgtasks_calls (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    name TEXT NOT NULL,
    args TEXT NOT NULL,
    kwargs TEXT NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('queued', 'running', 'failed')),
    attempts INTEGER NOT NULL DEFAULT 0,
    run_after REAL NOT NULL DEFAULT 0,
    owner TEXT,
    lease_until REAL,
    error TEXT
);
CREATE INDEX IF NOT EXISTS bgtasks_calls_by_state ON bgtasks_calls (state, run_after);
"""

# New calls, several rows in one statement: ({rows}) is "(?, ?, ?, 'running', 1, ?, ?)" once
# per row. Under the write lock AUTOINCREMENT gives them consecutive ids, the last one being
# the statement's lastrowid.
INSERT_RUNNING = """
INSERT INTO bgtasks_calls (name, args, kwargs, state, attempts, owner, lease_until)
VALUES {rows}
"""
INSERT_ROW = "(?, ?, ?, 'running', 1, ?, ?)"
INSERT_CHUNK = 150  # rows per statement: 750 parameters, under SQLite's oldest limit of 999
FINISH = "DELETE FROM bgtasks_calls WHERE id = ? AND owner = ?"
RETRY_LATER = """
UPDATE bgtasks_calls SET state = 'queued', owner = NULL, lease_until = NULL, run_after = ?,
    error = ?
WHERE id = ? AND owner = ?
"""
FAIL = """
UPDATE bgtasks_calls SET state = 'failed', owner = NULL, lease_until = NULL, error = ?
WHERE id = ? AND owner = ?
"""
# The calls this process runs now, ({ids}) being "?" once per id: a call whose attempt ended
# or was given up (a drain, a server's cancellation) is no longer renewed, so its lease runs out.
RENEW = """
UPDATE bgtasks_calls SET lease_until = ? WHERE owner = ? AND state = 'running' AND id IN ({ids})
"""
RENEW_CHUNK = 500  # ids per statement, under SQLite's oldest limit of 999 parameters
OTHER_OWNERS = "SELECT DISTINCT owner FROM bgtasks_calls WHERE state = 'running' AND owner != ?"
EXPIRE_OWNER = "UPDATE bgtasks_calls SET lease_until = 0 WHERE state = 'running' AND owner = ?"
CLAIMABLE = """
SELECT id, name, args, kwargs, attempts FROM bgtasks_calls
WHERE name IN ({names})
  AND ((state = 'queued' AND run_after <= ?) OR (state = 'running' AND lease_until < ?))
ORDER BY id LIMIT ?
"""
CLAIM = """
UPDATE bgtasks_calls SET state = 'running', owner = ?, lease_until = ?, attempts = attempts + 1
WHERE id = ?
"""
NAMES = "SELECT DISTINCT name FROM bgtasks_calls WHERE state != 'failed'"
STATUS = "SELECT state, count(*) FROM bgtasks_calls GROUP BY state"
FAILED = """
SELECT id, name, args, kwargs, attempts, error FROM bgtasks_calls WHERE state = 'failed'
ORDER BY id
"""
RETRY_FAILED = """
UPDATE bgtasks_calls SET state = 'queued', run_after = 0, attempts = 0, error = NULL
WHERE state = 'failed'
"""
HELD_BY = "SELECT name FROM bgtasks_calls WHERE owner = ? AND state = 'running' ORDER BY id"


Row = tuple[Any, ...]


class Journal:
    """The file, opened and checked; each method is one transaction, safe from any thread."""

    def __init__(self, path: str, synchronous: str) -> None:
        self.path = path
        self.synchronous = synchronous
        self._lock = threading.Lock()
        self._pid = -1
        self._connection: sqlite3.Connection | None = None
        with self._lock:
            self._connect()  # here, so that a bad path fails where it was given
        # Successes waiting for the deleting thread (rule 6), and how many were queued and
        # deleted so far, under one condition.
        lock = threading.Lock()
        self._done = threading.Condition(lock)  # successes were queued: for the deleter
        self._progress = threading.Condition(lock)  # successes were deleted: for flush
        self._finished: list[tuple[int, str]] = []
        self._queued = self._deleted = 0
        self._deleter_pid = -1
        self._asleep = False  # the deleting thread waits for successes

    def _connect(self) -> sqlite3.Connection:
        # Called with the lock held. A forked child must not share its parent's connection.
        if self._connection is not None and self._pid == os.getpid():
            return self._connection
        connection = sqlite3.connect(
            self.path, timeout=_BUSY_TIMEOUT, isolation_level=None, check_same_thread=False
        )
        try:
            # Rows are small: 1 KiB pages make a commit write a quarter of the bytes of the
            # default 4 KiB (~30% less time per commit, measured). Only a new file takes it.
            connection.execute(f"PRAGMA page_size = {_PAGE_SIZE}")
            mode = connection.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise sqlite3.OperationalError(f"the journal mode stayed {mode!r}, not WAL")
            connection.execute(f"PRAGMA synchronous = {self.synchronous}")
            connection.execute(f"PRAGMA journal_size_limit = {_WAL_LIMIT}")
            connection.executescript(SCHEMA)
        except BaseException:
            connection.close()
            raise
        self._connection, self._pid = connection, os.getpid()
        return connection

    def _write(self, statements: Iterable[tuple[str, Sequence[Any]]]) -> list[sqlite3.Cursor]:
        with self._lock:
            connection = self._connect()
            connection.execute("BEGIN IMMEDIATE")
            try:
                cursors = [connection.execute(sql, params) for sql, params in statements]
            except BaseException:
                connection.execute("ROLLBACK")
                raise
            connection.execute("COMMIT")
            return cursors

    def _read(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        with self._lock:
            return self._connect().execute(sql, params).fetchall()

    def insert_running(
        self, rows: Sequence[tuple[str, str, str]], owner: str, lease_until: float
    ) -> list[int]:
        """Write new calls, held by ``owner``; return their ids, in order. The successes
        waiting to be deleted go in the same transaction.

        Few calls into sqlite3, because each one lets go of the GIL and waits to get it back
        behind a busy event loop."""
        with self._done:
            finished, self._finished = self._finished, []
        ids: list[int] = []
        try:
            with self._lock:
                connection = self._connect()
                connection.execute("BEGIN IMMEDIATE")
                try:
                    if finished:
                        connection.executemany(FINISH, finished)
                    for start in range(0, len(rows), INSERT_CHUNK):
                        chunk = rows[start : start + INSERT_CHUNK]
                        sql = INSERT_RUNNING.format(rows=", ".join([INSERT_ROW] * len(chunk)))
                        params = [
                            value
                            for name, args, kwargs in chunk
                            for value in (name, args, kwargs, owner, lease_until)
                        ]
                        last = connection.execute(sql, params).lastrowid or 0
                        ids.extend(range(last - len(chunk) + 1, last + 1))
                except BaseException:
                    connection.execute("ROLLBACK")
                    raise
                connection.execute("COMMIT")
        except BaseException:
            with self._done:  # not deleted: the deleting thread tries again
                self._finished[:0] = finished
                self._done.notify_all()
            raise
        self._count_deleted(len(finished))
        return ids

    def _count_deleted(self, count: int) -> None:
        if count:
            with self._progress:
                self._deleted += count
                self._progress.notify_all()

    def finish_later(self, call_id: int, owner: str) -> None:
        """The call succeeded: delete it soon, with the other successes of the moment."""
        with self._done:
            self._finished.append((call_id, owner))
            self._queued += 1
            if self._deleter_pid != os.getpid():  # none yet in this process (or a fork)
                self._deleter_pid = os.getpid()
                threading.Thread(
                    target=self._delete_finished, name="bgtasks.sqlite deleter", daemon=True
                ).start()
            if self._asleep:  # only then: a wake-up per success would cost a GIL hand-off
                self._done.notify_all()

    def flush(self) -> None:
        """Return once every success queued so far is deleted."""
        with self._progress:
            target = self._queued
            while self._deleted < target:
                self._progress.wait()

    def _delete_finished(self) -> None:
        while True:
            with self._done:
                while not self._finished:
                    self._asleep = True
                    self._done.wait()
                    self._asleep = False
            time.sleep(_LINGER)  # a write of new calls may take them along
            with self._done:
                batch, self._finished = self._finished, []
            if not batch:
                continue
            try:
                with self._lock:
                    connection = self._connect()
                    connection.execute("BEGIN IMMEDIATE")
                    try:
                        connection.executemany(FINISH, batch)
                    except BaseException:
                        connection.execute("ROLLBACK")
                        raise
                    connection.execute("COMMIT")
            except Exception:  # the rows stay; once this process is gone they run again
                logging.getLogger("bgtasks").exception(
                    "bgtasks.sqlite could not mark %d finished calls done in %s; they will run "
                    "again after this process ends",
                    len(batch),
                    self.path,
                )
            self._count_deleted(len(batch))

    def retry_later(self, call_id: int, owner: str, run_after: float, error: str) -> bool:
        return self._write([(RETRY_LATER, (run_after, error, call_id, owner))])[0].rowcount == 1

    def fail(self, call_id: int, owner: str, error: str) -> bool:
        return self._write([(FAIL, (error, call_id, owner))])[0].rowcount == 1

    def renew(self, owner: str, lease_until: float, ids: Sequence[int]) -> None:
        chunks = [ids[start : start + RENEW_CHUNK] for start in range(0, len(ids), RENEW_CHUNK)]
        if chunks:
            self._write(
                (RENEW.format(ids=", ".join("?" * len(chunk))), (lease_until, owner, *chunk))
                for chunk in chunks
            )

    def other_owners(self, owner: str) -> list[str]:
        return [row[0] for row in self._read(OTHER_OWNERS, (owner,))]

    def expire(self, owners: Sequence[str]) -> None:
        """Their processes are dead: their calls may be claimed now, not when leases run out."""
        self._write((EXPIRE_OWNER, (dead,)) for dead in owners)

    def claim(
        self,
        names: Sequence[str],
        owner: str,
        now: float,
        lease_until: float,
        limit: int,
        running_here: set[int],
    ) -> list[Row]:
        """Take up to ``limit`` calls of ``names`` that are due, or whose lease ran out, but
        none that this process is running (a stalled loop may have let its lease run out)."""
        if not names or limit < 1:
            return []
        select = CLAIMABLE.format(names=", ".join("?" * len(names)))
        with self._lock:
            connection = self._connect()
            connection.execute("BEGIN IMMEDIATE")
            try:
                rows = connection.execute(select, (*names, now, now, limit)).fetchall()
                rows = [row for row in rows if row[0] not in running_here]
                connection.executemany(CLAIM, [(owner, lease_until, row[0]) for row in rows])
            except BaseException:
                connection.execute("ROLLBACK")
                raise
            connection.execute("COMMIT")
        # The attempt now starting is one more than the row said.
        return [(*row[:4], row[4] + 1) for row in rows]

    def names(self) -> list[str]:
        return [row[0] for row in self._read(NAMES)]

    def status(self) -> dict[str, int]:
        counts = {"queued": 0, "running": 0, "failed": 0}
        counts.update({state: count for state, count in self._read(STATUS)})
        return counts

    def failed(self) -> list[Row]:
        return self._read(FAILED)

    def retry_failed(self) -> int:
        return self._write([(RETRY_FAILED, ())])[0].rowcount

    def held_by(self, owner: str) -> list[str]:
        return [row[0] for row in self._read(HELD_BY, (owner,))]
