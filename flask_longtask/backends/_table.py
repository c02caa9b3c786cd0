"""The job table of :class:`~flask_longtask.backends.diskcache.DiskcacheBackend`.

Job keys live in their own lean table, ``longtask``, inside the diskcache database
(``cache.db``), not in diskcache's general-purpose ``Cache`` table. That table serves an LRU
cache: every row carries access statistics, two indexes and five triggers that keep counts and
sizes for eviction, and each ``Cache.set`` is a read then a write. Job records need none of it
(they must never be evicted), and a job writes about ten keys, so on the hot path those costs
dominated: a write here is one ``INSERT ... ON CONFLICT`` into a ``WITHOUT ROWID`` table, about
five times cheaper. diskcache still owns the directory, the database and its pragmas (WAL), and
the encoding of values: a :class:`diskcache.Disk` keeps values inline up to 1 MiB (SQLite reads
and writes blobs of that size faster than files) and writes larger ones to files beside the
database.

A file outlives its row only in ``longtask_trash``: triggers record the file of every row that
is deleted or overwritten, in the same transaction, and the pool host removes those files within
a fraction of a second (:meth:`Table.empty_trash`).
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import threading
import time
import typing as t

from .base import MISSING

if t.TYPE_CHECKING:  # pragma: no cover
    import diskcache

_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS longtask ("
    " key TEXT PRIMARY KEY, expire REAL, mode INTEGER NOT NULL, filename TEXT, value BLOB"
    ") WITHOUT ROWID",
    "CREATE INDEX IF NOT EXISTS longtask_expire ON longtask (expire) WHERE expire IS NOT NULL",
    "CREATE TABLE IF NOT EXISTS longtask_trash (filename TEXT NOT NULL)",
    "CREATE TRIGGER IF NOT EXISTS longtask_trash_delete AFTER DELETE ON longtask"
    " WHEN OLD.filename IS NOT NULL BEGIN INSERT INTO longtask_trash VALUES (OLD.filename); END",
    "CREATE TRIGGER IF NOT EXISTS longtask_trash_update AFTER UPDATE ON longtask"
    " WHEN OLD.filename IS NOT NULL AND OLD.filename IS NOT NEW.filename"
    " BEGIN INSERT INTO longtask_trash VALUES (OLD.filename); END",
)
_COLUMNS = "(key, expire, mode, filename, value) VALUES (?, ?, ?, ?, ?)"
_SET = (
    f"INSERT INTO longtask {_COLUMNS} ON CONFLICT (key) DO UPDATE SET"
    " expire = excluded.expire, mode = excluded.mode, filename = excluded.filename, value = excluded.value"
)
# An expired row counts as absent: add() replaces it.
_ADD = _SET + " WHERE longtask.expire IS NOT NULL AND longtask.expire <= ?"
_LIVE = "(expire IS NULL OR expire > ?)"


class Table:
    """Key/value storage with expiry and transactions, shared by every process on the host.

    Each thread has its own SQLite connection (re-made after a fork). :meth:`batch` opens a
    write transaction (``BEGIN IMMEDIATE``); batches nest, and the outermost commits.
    """

    def __init__(self, path: str, disk: diskcache.Disk) -> None:
        self.path = path
        self.disk = disk
        self._local = threading.local()
        self._lock = threading.Lock()
        self._connections: list[sqlite3.Connection] = []
        with self._connect() as con:  # closed at once: a connection per thread comes later
            for statement in _SCHEMA:
                con.execute(statement)

    def _connect(self) -> sqlite3.Connection:
        # diskcache's own connections wait up to 60 s for the write lock; so do ours.
        con = sqlite3.connect(self.path, timeout=60, isolation_level=None, check_same_thread=False)
        con.execute("PRAGMA synchronous = NORMAL")  # with WAL: durable across a crash of the app
        return con

    @property
    def con(self) -> sqlite3.Connection:
        local = self._local
        if getattr(local, "pid", None) != os.getpid():
            local.con = self._connect()
            local.pid = os.getpid()
            local.depth = 0
            with self._lock:
                self._connections.append(local.con)
        return t.cast(sqlite3.Connection, local.con)

    def close(self) -> None:
        with self._lock:
            connections, self._connections = self._connections, []
        for con in connections:
            with contextlib.suppress(sqlite3.Error):
                con.close()
        self._local = threading.local()

    @contextlib.contextmanager
    def batch(self) -> t.Iterator[None]:
        con = self.con
        local = self._local
        if local.depth:
            local.depth += 1
            try:
                yield
            finally:
                local.depth -= 1
            return
        con.execute("BEGIN IMMEDIATE")
        local.depth = 1
        try:
            yield
        except BaseException:
            local.depth = 0
            with contextlib.suppress(sqlite3.Error):
                con.execute("ROLLBACK")
            raise
        local.depth = 0
        con.execute("COMMIT")

    # -- values -----------------------------------------------------------------------------------

    def _fetch(self, mode: int, filename: str | None, value: t.Any) -> t.Any:
        return self.disk.fetch(mode, filename, value, False)

    def get(self, key: str) -> t.Any:
        row = self.con.execute(
            f"SELECT mode, filename, value FROM longtask WHERE key = ? AND {_LIVE}", (key, time.time())
        ).fetchone()
        return MISSING if row is None else self._fetch(*row)

    def get_many(self, keys: t.Sequence[str]) -> list[t.Any]:
        marks = ", ".join("?" * len(keys))
        rows = self.con.execute(
            f"SELECT key, mode, filename, value FROM longtask WHERE key IN ({marks}) AND {_LIVE}",
            (*keys, time.time()),
        ).fetchall()
        found = {key: (mode, filename, value) for key, mode, filename, value in rows}
        return [self._fetch(*found[key]) if key in found else MISSING for key in keys]

    def _row(self, key: str, value: t.Any, expire: float | None) -> tuple[t.Any, ...]:
        _, mode, filename, db_value = self.disk.store(value, False, key=key)
        return (key, None if expire is None else time.time() + expire, mode, filename, db_value)

    def set(self, key: str, value: t.Any, expire: float | None = None) -> None:
        row = self._row(key, value, expire)
        try:
            self.con.execute(_SET, row)
        except BaseException:
            self._discard(row[3])
            raise

    def add(self, key: str, value: t.Any, expire: float | None = None) -> bool:
        row = self._row(key, value, expire)
        try:
            added = self.con.execute(_ADD, (*row, time.time())).rowcount == 1
        except BaseException:
            self._discard(row[3])
            raise
        if not added:
            self._discard(row[3])
        return added

    def _discard(self, filename: str | None) -> None:
        if filename is not None:
            self.disk.remove(filename)

    def delete(self, key: str) -> None:
        self.con.execute("DELETE FROM longtask WHERE key = ?", (key,))

    def delete_if(self, key: str, value: t.Any) -> bool:
        with self.batch():
            if self.get(key) != value:
                return False
            self.delete(key)
            return True

    def scan(self, prefix: str) -> list[str]:
        # A range query on the primary key: O(matches), not O(all keys).
        rows = self.con.execute(
            f"SELECT key FROM longtask WHERE key >= ? AND key < ? AND {_LIVE}",
            (prefix, prefix + "\U0010ffff", time.time()),
        ).fetchall()
        return [row[0] for row in rows]

    def sweep(self) -> int:
        """Delete expired rows (and their files); return how many."""
        removed = self.con.execute("DELETE FROM longtask WHERE expire IS NOT NULL AND expire <= ?", (time.time(),))
        self.empty_trash()
        return int(removed.rowcount)

    def empty_trash(self) -> None:
        """Remove the files of values deleted or replaced since the last call."""
        if self.con.execute("SELECT 1 FROM longtask_trash LIMIT 1").fetchone() is None:
            return
        with self.batch():
            trash = [row[0] for row in self.con.execute("SELECT filename FROM longtask_trash").fetchall()]
            self.con.execute("DELETE FROM longtask_trash")
        for filename in trash:  # after the commit: a rolled-back delete keeps its file
            self.disk.remove(filename)

    def count(self) -> int:
        """Rows in the table, expired or not (tests use it to see the sweep work)."""
        return int(self.con.execute("SELECT COUNT(*) FROM longtask").fetchone()[0])
