"""The push producer's write-first outbox: a SQLite file that outlives Kafka outages and crashes.

A device batch is appended here, in one fsynced transaction, *before* the device is told `OK`;
the publisher thread then drains rows into Kafka oldest first and deletes them (``ack``) only
once Kafka has confirmed them. A crash between the two re-sends rows, it never loses them:
events carry deterministic ids and every sink is idempotent.

The same file keeps *marks*: small named values (a pull device's high-water mark) written in the
same transaction as the records they describe, so a crash never leaves a mark ahead of the
records it vouches for, nor records without their mark.

Two connections share the file (WAL mode lets a reader and a writer work side by side):

* the *append* connection runs with ``synchronous=FULL``, so a commit is on disk when
  ``append`` returns — the promise the HTTP reply makes to the device;
* the *drain* connection (peek, ack) runs with ``synchronous=NORMAL``: an ack lost in a power
  cut only means rows are sent again, which is harmless, and it keeps fsyncs off the hot path.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from tapstream.errors import SpoolError

logger = logging.getLogger(__name__)

# (topic, key, value) as handed to the Kafka producer.
SpoolRecord = tuple[str, bytes | None, bytes]

# AUTOINCREMENT: ids never go backwards, even after the table has been emptied, so "oldest
# first" and "ack up to id" stay true for the life of the file.
_SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    topic       TEXT    NOT NULL,
    key         BLOB,
    value       BLOB    NOT NULL,
    appended_at REAL    NOT NULL
)
"""
_MARKS = "CREATE TABLE IF NOT EXISTS marks (key TEXT PRIMARY KEY, value TEXT NOT NULL)"


@dataclass(frozen=True)
class SpoolRow:
    """One record waiting for Kafka; ``id`` orders rows oldest first."""

    id: int
    topic: str
    key: bytes | None
    value: bytes


class Spool:
    """A durable FIFO of Kafka records in one SQLite file; safe to share between threads.

    ``busy_timeout_s`` bounds how long one connection waits for the other's write lock.
    """

    def __init__(self, path: Path, *, busy_timeout_s: float = 5.0) -> None:
        self.path = path
        created = not path.exists()
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._append_db = _connect(path, "FULL", busy_timeout_s)
            self._append_db.execute(_SCHEMA)
            self._append_db.execute(_MARKS)
            self._drain_db = _connect(path, "NORMAL", busy_timeout_s)
            (count,) = self._drain_db.execute("SELECT count(*) FROM outbox").fetchone()
        except (sqlite3.Error, OSError) as exc:
            raise SpoolError(f"cannot open the spool {path}: {exc}") from exc
        if created:
            _fsync_dir(path.parent)  # the new file's directory entry must survive a crash too
        self._append_lock = threading.Lock()
        self._drain_lock = threading.Lock()
        self._count_lock = threading.Lock()
        self._depth: int = count
        self._closed = False
        logger.info("spool %s opened with %d rows waiting", path, count)

    def append(self, records: Sequence[SpoolRecord], marks: Mapping[str, str] | None = None) -> None:
        """Store ``records`` and set ``marks`` in one transaction; on return they are on disk.

        Raises SpoolError when the disk refuses (full, read-only, I/O error): the caller must
        then refuse the batch so the device keeps it.
        """
        if not records and not marks:
            return
        with self._append_lock:
            now = time.time()  # under the lock: ids and append times then rise together
            rows = [(topic, key, value, now) for topic, key, value in records]
            db = self._open(self._append_db)
            try:
                db.execute("BEGIN IMMEDIATE")
                db.executemany("INSERT INTO outbox (topic, key, value, appended_at) VALUES (?, ?, ?, ?)", rows)
                if marks:
                    db.executemany("INSERT OR REPLACE INTO marks (key, value) VALUES (?, ?)", marks.items())
                db.execute("COMMIT")
            except sqlite3.Error as exc:
                _rollback(db)
                raise SpoolError(f"cannot append {len(rows)} records to {self.path}: {exc}") from exc
        with self._count_lock:
            self._depth += len(rows)

    def mark(self, key: str) -> str | None:
        """The value last stored under ``key`` by ``append``, or None."""
        with self._append_lock:
            db = self._open(self._append_db)
            try:
                found = db.execute("SELECT value FROM marks WHERE key = ?", (key,)).fetchone()
            except sqlite3.Error as exc:
                raise SpoolError(f"cannot read marks of {self.path}: {exc}") from exc
        return None if found is None else str(found[0])

    def peek(self, limit: int) -> list[SpoolRow]:
        """The ``limit`` oldest rows, oldest first; they stay in the spool until acked."""
        with self._drain_lock:
            db = self._open(self._drain_db)
            try:
                found = db.execute(
                    "SELECT id, topic, key, value FROM outbox ORDER BY id LIMIT ?", (limit,)
                ).fetchall()
            except sqlite3.Error as exc:
                raise SpoolError(f"cannot read {self.path}: {exc}") from exc
        return [SpoolRow(id=row[0], topic=row[1], key=row[2], value=row[3]) for row in found]

    def ack(self, up_to_id: int) -> int:
        """Delete every row with id <= ``up_to_id`` (Kafka has them); return how many went."""
        with self._drain_lock:
            db = self._open(self._drain_db)
            try:
                removed = db.execute("DELETE FROM outbox WHERE id <= ?", (up_to_id,)).rowcount
            except sqlite3.Error as exc:
                raise SpoolError(f"cannot ack rows of {self.path}: {exc}") from exc
        with self._count_lock:
            self._depth -= removed
        return removed

    def depth(self) -> int:
        """Rows waiting for Kafka (kept in memory: cheap enough for every health check)."""
        with self._count_lock:
            return self._depth

    def oldest_age_s(self) -> float | None:
        """Seconds the oldest waiting row has been in the spool, or None when it is empty."""
        with self._drain_lock:
            db = self._open(self._drain_db)
            try:
                # The first row by id, not min(appended_at): one index lookup rather than a scan
                # of a spool that may hold an outage's worth of rows (metrics read it every scrape).
                found = db.execute("SELECT appended_at FROM outbox ORDER BY id LIMIT 1").fetchone()
            except sqlite3.Error as exc:
                raise SpoolError(f"cannot read {self.path}: {exc}") from exc
        return None if found is None else max(0.0, time.time() - found[0])

    def close(self) -> None:
        """Close the file; safe to call twice."""
        with self._append_lock, self._drain_lock:
            if self._closed:
                return
            self._closed = True
            self._append_db.close()
            self._drain_db.close()
        logger.info("spool %s closed with %d rows waiting", self.path, self._depth)

    def _open(self, db: sqlite3.Connection) -> sqlite3.Connection:
        if self._closed:
            raise SpoolError(f"the spool {self.path} is closed")
        return db


def _connect(path: Path, synchronous: str, busy_timeout_s: float) -> sqlite3.Connection:
    # isolation_level=None: transactions are explicit (BEGIN IMMEDIATE takes the write lock up
    # front, so two writers wait for each other instead of failing mid-transaction).
    db = sqlite3.connect(path, timeout=busy_timeout_s, isolation_level=None, check_same_thread=False)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute(f"PRAGMA synchronous={synchronous}")
    return db


def _rollback(db: sqlite3.Connection) -> None:
    try:
        db.execute("ROLLBACK")
    except sqlite3.Error:
        pass  # no transaction open (BEGIN itself failed)


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
