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

# Rows are keyed by (id, kind): "job:<id>" is (<id>, "job:"). The keys of one job are
# neighbours in the primary key, so a step of a job (claim and start, finish) dirties one page of
# the table, not one per kind of key: each page a commit writes costs ~15 us here. For the same
# reason there is no index on ``expire``: the sweep reads the table instead, once a minute.
_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS longtask ("
    " id TEXT NOT NULL, kind TEXT NOT NULL, expire REAL, mode INTEGER NOT NULL, filename TEXT, value BLOB,"
    " PRIMARY KEY (id, kind)"
    ") WITHOUT ROWID",
    "CREATE TABLE IF NOT EXISTS longtask_trash (filename TEXT NOT NULL)",
    "CREATE TRIGGER IF NOT EXISTS longtask_trash_delete AFTER DELETE ON longtask"
    " WHEN OLD.filename IS NOT NULL BEGIN INSERT INTO longtask_trash VALUES (OLD.filename); END",
    "CREATE TRIGGER IF NOT EXISTS longtask_trash_update AFTER UPDATE ON longtask"
    " WHEN OLD.filename IS NOT NULL AND OLD.filename IS NOT NEW.filename"
    " BEGIN INSERT INTO longtask_trash VALUES (OLD.filename); END",
)
_SET = (
    "INSERT INTO longtask (id, kind, expire, mode, filename, value) VALUES (?, ?, ?, ?, ?, ?)"
    " ON CONFLICT (id, kind) DO UPDATE SET"
    " expire = excluded.expire, mode = excluded.mode, filename = excluded.filename, value = excluded.value"
)
# An expired row counts as absent: add() replaces it.
_ADD = _SET + " WHERE longtask.expire IS NOT NULL AND longtask.expire <= ?"
_LIVE = "(expire IS NULL OR expire > ?)"
#: Rows the sweep reads per query (it deletes what expired among them in one short transaction).
_SWEEP_CHUNK = 2000


#: This process's id, kept current across forks without a system call per statement.
_pid = [os.getpid()]
os.register_at_fork(after_in_child=lambda: _pid.__setitem__(0, os.getpid()))


def _split(key: str) -> tuple[str, str]:
    """``"job:abc"`` -> ``("abc", "job:")``; a key without a colon is all kind: ``("", key)``."""
    i = key.find(":") + 1
    return (key[i:], key[:i]) if i else ("", key)


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
        if getattr(local, "pid", None) != _pid[0]:
            local.con = self._connect()
            local.pid = _pid[0]
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
            f"SELECT mode, filename, value FROM longtask WHERE id = ? AND kind = ? AND {_LIVE}",
            (*_split(key), time.time()),
        ).fetchone()
        return MISSING if row is None else self._fetch(*row)

    def get_many(self, keys: t.Sequence[str]) -> list[t.Any]:
        parts = [_split(key) for key in keys]
        ids = {id_ for id_, _ in parts}
        if len(ids) == 1:  # the keys of one job (the worker's first read): one range of the index
            where, args = "id = ?", tuple(ids)
        else:
            where, args = f"id IN ({', '.join('?' * len(ids))})", tuple(ids)
        rows = self.con.execute(
            f"SELECT id, kind, mode, filename, value FROM longtask WHERE {where} AND {_LIVE}", (*args, time.time())
        ).fetchall()
        found = {(id_, kind): (mode, filename, value) for id_, kind, mode, filename, value in rows}
        return [self._fetch(*found[part]) if part in found else MISSING for part in parts]

    def _row(self, key: str, value: t.Any, expire: float | None) -> tuple[t.Any, ...]:
        _, mode, filename, db_value = self.disk.store(value, False, key=key)
        return (*_split(key), None if expire is None else time.time() + expire, mode, filename, db_value)

    def set(self, key: str, value: t.Any, expire: float | None = None) -> None:
        row = self._row(key, value, expire)
        try:
            self.con.execute(_SET, row)
        except BaseException:
            self._discard(row[4])
            raise

    def add(self, key: str, value: t.Any, expire: float | None = None) -> bool:
        row = self._row(key, value, expire)
        try:
            added = self.con.execute(_ADD, (*row, time.time())).rowcount == 1
        except BaseException:
            self._discard(row[4])
            raise
        if not added:
            self._discard(row[4])
        return added

    def _discard(self, filename: str | None) -> None:
        if filename is not None:
            self.disk.remove(filename)

    def delete(self, key: str) -> None:
        self.con.execute("DELETE FROM longtask WHERE id = ? AND kind = ?", _split(key))

    def delete_if(self, key: str, value: t.Any) -> bool:
        with self.batch():
            if self.get(key) != value:
                return False
            self.delete(key)
            return True

    def scan(self, prefix: str) -> list[str]:
        # Reads the whole table: listings and the pool host's recovery only, never a job's path.
        rows = self.con.execute(
            f"SELECT kind || id FROM longtask WHERE (kind || id) >= ? AND (kind || id) < ? AND {_LIVE}",
            (prefix, prefix + "\U0010ffff", time.time()),
        ).fetchall()
        return [row[0] for row in rows]

    def sweep(self) -> int:
        """Delete expired rows (and their files); return how many.

        Reads the table in chunks, outside any transaction (WAL readers block nobody), and
        deletes what expired in each chunk in one short write transaction.
        """
        con, removed, after = self.con, 0, ("", "")
        while True:
            now = time.time()
            rows = con.execute(
                "SELECT id, kind, expire FROM longtask WHERE (id, kind) > (?, ?) ORDER BY id, kind LIMIT ?",
                (*after, _SWEEP_CHUNK),
            ).fetchall()
            expired = [(id_, kind, now) for id_, kind, expire in rows if expire is not None and expire <= now]
            if expired:
                with self.batch():
                    removed += con.executemany(
                        "DELETE FROM longtask WHERE id = ? AND kind = ? AND expire <= ?", expired
                    ).rowcount
            if len(rows) < _SWEEP_CHUNK:
                break
            after = rows[-1][:2]
        self.empty_trash()
        return removed

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
