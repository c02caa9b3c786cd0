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
import fcntl
import os
import pickle
import sqlite3
import threading
import time
import typing as t

import diskcache

from ...exceptions import TamperedValueError
from ..base import MISSING, JobEntry, Write
from . import index
from .connections import Cache, Connections, ThreadState

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
_SET_VALUES = "(?, ?, ?, ?, ?, ?)"
_SET = (
    f"INSERT INTO longtask (id, kind, expire, mode, filename, value) VALUES {_SET_VALUES}"
    " ON CONFLICT (id, kind) DO UPDATE SET"
    " expire = excluded.expire, mode = excluded.mode, filename = excluded.filename, value = excluded.value"
)
_SET_MANY: dict[int, str] = {}


def _set_many(rows: int) -> str:
    """The upsert of ``rows`` rows in one statement."""
    sql = _SET_MANY.get(rows)
    if sql is None:
        sql = _SET_MANY[rows] = _SET.replace(_SET_VALUES, ", ".join([_SET_VALUES] * rows), 1)
    return sql


# An expired row counts as absent: add() replaces it.
_ADD = _SET + " WHERE longtask.expire IS NOT NULL AND longtask.expire <= ?"
_LIVE = "(expire IS NULL OR expire > ?)"
#: Rows the sweep reads per query (it deletes what expired among them in one short transaction).
_SWEEP_CHUNK = 2000


#: Seconds a statement waits for a lock held by another connection before it fails.
BUSY_TIMEOUT = 60.0


def _is_busy(exc: sqlite3.OperationalError) -> bool:
    # SQLITE_BUSY ("database is locked") has no error code attribute before Python 3.11.
    return "locked" in str(exc) or "busy" in str(exc)


#: The writers' lock files this thread holds, by path: a thread never waits on itself.
_held = threading.local()


def _after_fork_in_child() -> None:
    _held.paths = set()  # the forking thread's: its locks were the parent's


os.register_at_fork(after_in_child=_after_fork_in_child)


def _one_statement(plan: list[tuple[str, list[tuple[t.Any, ...]]]]) -> bool:
    """Whether :meth:`Table._apply` runs ``plan`` as a single statement."""
    if len(plan) != 1:
        return False
    sql, rows = plan[0]
    return len(rows) == 1 or (sql is _SET and len(rows) <= 100)


def _split(key: str) -> tuple[str, str]:
    """``"job:abc"`` -> ``("abc", "job:")``; a key without a colon is all kind: ``("", key)``."""
    i = key.find(":") + 1
    return (key[i:], key[:i]) if i else ("", key)


class Claim:
    """A claim to make at the end of :meth:`Table.add_then_write`'s transaction, and what it
    read: a pool worker ends its job and claims the next one (that the pool sent it ahead) in one
    transaction (see :mod:`~flask_longtask.backends.diskcache.child`)."""

    __slots__ = ("expire", "key", "keys", "tried", "value", "values", "won")

    def __init__(self, key: str, value: t.Any, expire: float | None, keys: t.Sequence[str]) -> None:
        self.key, self.value, self.expire, self.keys = key, value, expire, keys
        #: Whether it was tried: only when the first write was made as asked (``chosen``).
        self.tried = False
        #: Whether the claim was made (and committed).
        self.won = False
        #: The values of ``keys``, read in the same transaction once it was made.
        self.values: list[t.Any] = []


class Table(Connections):
    """Key/value storage with expiry and transactions, shared by every process on the host.

    Each thread has its own SQLite connection and writers' lock file (see
    :mod:`~flask_longtask.backends.diskcache.connections`: re-made after a fork, closed when the
    thread ends, by :meth:`close` or at exit). :meth:`batch` groups statements in one write
    transaction; batches nest, and the outermost commits.
    """

    writer_lock: str

    def __init__(self, path: str, disk: diskcache.Disk) -> None:
        self.path = path
        self.disk = disk
        con = self._connect()  # closed at once: a connection per thread comes later
        try:
            for statement in _SCHEMA:
                self._run(statement, con=con)
            index.create(self, con)  # (the listing index: see .index)
        finally:
            con.close()
        super().__init__(os.path.join(os.path.dirname(path), "writer.lock"))

    def _connect(self) -> sqlite3.Connection:
        # timeout=0: SQLite's own busy handler sleeps 1 ms, then 2, 5, 10... when another
        # connection holds the write lock, which for transactions of ~50 us wastes most of the
        # wait. Writers queue on the writers' flock instead (batch()), and _run() retries the
        # rare statement that still finds SQLite's lock taken, after 50 us, doubling to 5 ms,
        # for up to ``BUSY_TIMEOUT`` seconds.
        con = sqlite3.connect(self.path, timeout=0, isolation_level=None, check_same_thread=False)
        try:
            self._run("PRAGMA synchronous = NORMAL", con=con)  # with WAL: durable across a crash of the app
            # Checkpoints (copying the write-ahead log into the database, with two fsyncs) are the
            # pool host's job, a few times a second (checkpoint()). SQLite's default, a checkpoint
            # by whichever commit finds the log over 1,000 pages, starves under a steady stream of
            # short readers: the log cannot restart, so every commit checkpoints, and fsyncs,
            # again. This larger threshold only bounds the log while no pool host runs.
            self._run("PRAGMA wal_autocheckpoint = 10000", con=con)
        except BaseException:  # a database it cannot read
            con.close()
            raise
        return con

    def _run(self, sql: str, args: t.Sequence[t.Any] = (), *, con: sqlite3.Connection | None = None) -> sqlite3.Cursor:
        """Execute one statement (in the batch's transaction, if one is open), retrying while
        another connection holds the lock it needs."""
        if con is None:
            state = self._state
            con = state.con
            if state.depth and not state.begun:
                self._begin(state)
        try:
            return con.execute(sql, args)
        except sqlite3.OperationalError as exc:
            if not _is_busy(exc):
                raise
        delay, deadline = 0.00005, time.monotonic() + BUSY_TIMEOUT
        while True:
            time.sleep(delay)
            try:
                return con.execute(sql, args)
            except sqlite3.OperationalError as exc:
                if not _is_busy(exc) or time.monotonic() > deadline:
                    raise
            delay = min(delay * 2, 0.005)

    def _write(self, sql: str, args: t.Sequence[t.Any]) -> int:
        """One write statement, in the open batch or as its own transaction; the rows changed.

        On its own it takes the writers' lock (see :meth:`batch`) but no ``BEGIN``/``COMMIT``:
        SQLite commits a statement outside a transaction by itself.
        """
        state = self._state
        if state.depth:
            return int(self._run(sql, args).rowcount)
        self._lock_writers(state)
        try:
            return int(self._run(sql, args, con=state.con).rowcount)
        finally:
            self._unlock_writers(state)

    def _many(self, sql: str, rows: t.Sequence[t.Sequence[t.Any]]) -> int:
        """Execute a write statement for each row, in the open batch; return the rows changed."""
        state = self._state
        if not state.begun:
            self._begin(state)
        return int(state.con.executemany(sql, rows).rowcount)

    @property
    def con(self) -> sqlite3.Connection:
        """This thread's connection."""
        return self._state.con

    # -- transactions -----------------------------------------------------------------------------

    def _lock_writers(self, state: ThreadState) -> None:
        held: set[str] = _held.__dict__.setdefault("paths", set())
        if self.writer_lock in held:
            return  # this thread holds it through another table: SQLite's lock then arbitrates
        fcntl.flock(state.writer, fcntl.LOCK_EX)
        held.add(self.writer_lock)
        state.locked = True

    def _unlock_writers(self, state: ThreadState) -> None:
        if state.locked:
            state.locked = False
            _held.paths.discard(self.writer_lock)
            if state.open:  # not closed under us by Table.close() (the fd may be reused)
                fcntl.flock(state.writer, fcntl.LOCK_UN)

    @contextlib.contextmanager
    def batch(self) -> t.Iterator[None]:
        """A write transaction; every write runs in one (the outermost commits).

        The transaction begins at its first statement, so that the values it writes can be
        encoded before it holds the lock. Writers then queue on an ``flock`` of ``writer.lock``
        beside the database: the kernel wakes the next one the moment the lock is free, where
        SQLite's own lock can only be polled. SQLite's lock is then almost always free at once
        (only diskcache's own rare writes, for the pool's mailbox, bypass the queue). If the
        transaction rolls back, the files it wrote for large values are removed.
        """
        state = self._state
        if state.depth:
            state.depth += 1
            try:
                yield
            finally:
                state.depth -= 1
            return
        state.depth, state.begun = 1, False
        try:
            yield
            if state.begun:
                self._run("COMMIT", con=state.con)
                state.begun = False
        finally:
            state.depth = 0
            if state.begun:  # an exception, in the batch or in its commit
                state.begun = False
                if state.open and state.con.in_transaction:  # it did not commit
                    with contextlib.suppress(sqlite3.Error):
                        state.con.execute("ROLLBACK")
                    for filename in state.files:
                        self.disk.remove(filename)
            state.files.clear()
            self._unlock_writers(state)

    @property
    def in_batch(self) -> bool:
        """Whether this thread is inside :meth:`batch` (its writes commit when that ends)."""
        return bool(self._state.depth)

    def _begin(self, state: ThreadState) -> None:
        self._lock_writers(state)
        state.begun = True  # from here on, the batch's end commits or rolls back, and unlocks
        self._run("BEGIN IMMEDIATE", con=state.con)

    # -- values -----------------------------------------------------------------------------------

    def _fetch(self, mode: int, filename: str | None, value: t.Any, lenient: bool = False) -> t.Any:
        try:
            return self.disk.fetch(mode, filename, value, False)
        except FileNotFoundError:  # replaced or deleted since the row was read: gone, as in diskcache
            return MISSING
        except TamperedValueError as exc:
            if lenient:  # (a job's claim: the job fails with it, rather than the read)
                return exc
            raise

    def get(self, key: str) -> t.Any:
        row = self._run(
            f"SELECT mode, filename, value FROM longtask WHERE id = ? AND kind = ? AND {_LIVE}",
            (*_split(key), time.time()),
        ).fetchone()
        return MISSING if row is None else self._fetch(*row)

    def get_many(self, keys: t.Sequence[str], *, lenient: bool = False) -> list[t.Any]:
        """The values of ``keys`` (``MISSING`` where none); ``lenient``: a value that fails its
        check (:class:`TamperedValueError`) is returned as that error instead of raised."""
        parts = [_split(key) for key in keys]
        ids = {id_ for id_, _ in parts}
        kinds = {kind for _, kind in parts}
        # Keys of one job (a status read, the worker's first read) are neighbours in the index.
        where = f"id IN ({', '.join('?' * len(ids))}) AND kind IN ({', '.join('?' * len(kinds))})"
        args = (*ids, *kinds)
        rows = self._run(
            f"SELECT id, kind, mode, filename, value FROM longtask WHERE {where} AND {_LIVE}", (*args, time.time())
        ).fetchall()
        found = {(id_, kind): (mode, filename, value) for id_, kind, mode, filename, value in rows}
        return [self._fetch(*found[part], lenient) if part in found else MISSING for part in parts]

    def _row(self, key: str, value: t.Any, expire: float | None) -> tuple[t.Any, ...]:
        _, mode, filename, db_value = self.disk.store(value, False, key=key)
        if filename is not None:
            state = self._state
            if state.depth:  # removed if the batch rolls back
                state.files.append(filename)
        return (*_split(key), None if expire is None else time.time() + expire, mode, filename, db_value)

    def set(self, key: str, value: t.Any, expire: float | None = None) -> None:
        row = self._row(key, value, expire)
        try:
            self._write(_SET, row)
        except BaseException:
            self._discard(row[4])
            raise

    def add(self, key: str, value: t.Any, expire: float | None = None) -> bool:
        row = self._row(key, value, expire)
        try:
            added = self._write(_ADD, (*row, time.time())) == 1
        except BaseException:
            self._discard(row[4])
            raise
        if not added:
            self._discard(row[4])
        return added

    def claim_and_get(
        self, key: str, value: t.Any, expire: float | None, keys: t.Sequence[str]
    ) -> tuple[bool, list[t.Any]]:
        # Read first, outside the lock (the claim decides who runs the job; what it reads cannot
        # change under a claim, except the cancel flag, which the running job sees later).
        values = self.get_many(keys, lenient=True)
        row = self._row(key, value, expire)
        added = self._write(_ADD, (*row, time.time())) == 1
        if not added:
            self._discard(row[4])
        return added, values

    def add_then_write(
        self,
        key: str,
        value: t.Any,
        expire: float | None,
        writes: t.Sequence[Write],
        *,
        unless: str | None = None,
        otherwise: t.Sequence[Write] = (),
        then_claim: Claim | None = None,
        ended: t.Callable[[bool], JobEntry | None] | None = None,
    ) -> bool | None:
        """See :meth:`Backend.add_then_write`; with ``then_claim``, the same transaction then
        makes that claim, if the first write was made as asked (not ``otherwise``, and not
        already made): see :class:`Claim`. ``ended`` (a job's end: ``JobEnd.ended``) gives the
        job's listing entry either way, written with the writes chosen (see :mod:`.index`)."""
        # The values are encoded before the transaction takes the lock; the "otherwise" ones (a
        # cancelled job's end: rare) only when they are chosen.
        row = self._row(key, value, expire)
        plans = [self._with_entry(self._plan(writes), ended and ended(True), end=True), []]
        chosen: bool | None = None
        committed = False
        try:
            claim_row = None if then_claim is None else self._row(then_claim.key, then_claim.value, then_claim.expire)
            with self.batch():
                if self._run(_ADD, (*row, time.time())).rowcount == 1:
                    chosen = unless is None or self.get(unless) is MISSING
                    if not chosen:
                        plans[1] = self._with_entry(self._plan(otherwise), ended and ended(False), end=True)
                    self._apply(plans[0 if chosen else 1])
                if then_claim is not None and claim_row is not None and chosen:
                    then_claim.tried = True
                    then_claim.won = self._run(_ADD, (*claim_row, time.time())).rowcount == 1
                    if then_claim.won:
                        then_claim.values = self.get_many(then_claim.keys, lenient=True)
            committed = True
        finally:
            # Remove the files of values that were not written (all of them, if it failed).
            for i, plan in enumerate(plans):
                if not committed or chosen is not (i == 0):
                    self._discard_plan(plan)
            if not committed or chosen is None:
                self._discard(row[4])
            if then_claim is not None and not committed:
                then_claim.won = then_claim.tried = False
        return chosen

    def write_all(
        self,
        writes: t.Sequence[Write],
        *,
        locked: t.Callable[[], None] | None = None,
        entries: t.Sequence[JobEntry] = (),
    ) -> None:
        """Apply ``writes`` in one transaction, every value encoded before it takes the lock.

        A few sets only (a new job's records): one multi-row statement, which SQLite commits by
        itself. ``locked()`` is called once the transaction holds the writers' lock, before the
        writes: every other writer then waits for their commit. ``entries``: new jobs' listing
        entries, written in the same transaction (see :mod:`.index`).
        """
        plan = self._plan(writes)
        if entries:
            plan.append((index.PUT, [index.row(entry) for entry in entries]))
        try:
            state = self._state
            if not _one_statement(plan) or state.depth:
                with self.batch():
                    if locked is not None:
                        if not state.begun:
                            self._begin(state)
                        locked()
                    self._apply(plan)
            elif locked is None:
                self._apply(plan)
            else:  # the lock, then the statement, which SQLite commits by itself: no BEGIN/COMMIT
                self._lock_writers(state)
                try:
                    locked()
                    self._apply(plan)
                finally:
                    self._unlock_writers(state)
        except BaseException:
            self._discard_plan(plan)
            raise

    def _apply(self, plan: list[tuple[str, list[tuple[t.Any, ...]]]]) -> None:
        """Run a plan's statements: up to 100 sets (SQLite's limit on variables) as one multi-row
        statement, one row as one statement, more rows with ``executemany``."""
        for sql, rows in plan:
            if len(rows) == 1:
                self._write(sql, rows[0])
            elif sql is _SET and len(rows) <= 100:
                self._write(_set_many(len(rows)), [arg for row in rows for arg in row])
            else:
                with self.batch():
                    self._many(sql, rows)

    def _plan(self, writes: t.Sequence[Write]) -> list[tuple[str, list[tuple[t.Any, ...]]]]:
        """``writes`` as statements with their rows, in order (consecutive sets together)."""
        plan: list[tuple[str, list[tuple[t.Any, ...]]]] = []
        try:
            for op, key, value, expire in writes:
                if op == "set":
                    sql, args = _SET, self._row(key, value, expire)
                elif op == "delete":
                    sql, args = "DELETE FROM longtask WHERE id = ? AND kind = ?", _split(key)
                elif op == "delete_if":
                    # Small plain values (the core's are job ids) are stored inline as they are.
                    _, mode, filename, db_value = self.disk.store(value, False, key=key)
                    if filename is not None:  # pragma: no cover - never a file for the core's values
                        self.disk.remove(filename)
                        raise ValueError("delete_if() compares small values only.")
                    sql, args = (
                        "DELETE FROM longtask WHERE id = ? AND kind = ? AND mode = ? AND value = ?",
                        (
                            *_split(key),
                            mode,
                            db_value,
                        ),
                    )
                else:  # pragma: no cover - the core only makes these three
                    raise ValueError(f"Unknown write {op!r}.")
                if plan and plan[-1][0] is sql:
                    plan[-1][1].append(args)
                else:
                    plan.append((sql, [args]))
        except BaseException:  # a value that cannot be encoded: no file of the others may stay
            self._discard_plan(plan)
            raise
        return plan

    @staticmethod
    def _with_entry(
        plan: list[tuple[str, list[tuple[t.Any, ...]]]], entry: JobEntry | None, *, end: bool = False
    ) -> list[tuple[str, list[tuple[t.Any, ...]]]]:
        """``plan``, then the statement that writes a job's listing entry (if any), and at its
        ``end`` the one that adds it to the tallies."""
        if entry is not None:
            plan.append((index.PUT, [index.row(entry)]))
            if end:
                plan.append((index.TALLY, [index.tally_row(entry)]))
        return plan

    def _discard_plan(self, plan: list[tuple[str, list[tuple[t.Any, ...]]]]) -> None:
        """Remove the files written for the values of a plan that was not (all) stored."""
        for sql, rows in plan:
            if sql is _SET:
                for row in rows:
                    self._discard(row[4])

    def _discard(self, filename: str | None) -> None:
        if filename is not None:
            self.disk.remove(filename)

    def delete(self, key: str) -> None:
        self._write("DELETE FROM longtask WHERE id = ? AND kind = ?", _split(key))

    def delete_if(self, key: str, value: t.Any) -> bool:
        with self.batch():
            if self.get(key) != value:
                return False
            self.delete(key)
            return True

    def scan(self, prefix: str) -> list[str]:
        # Reads the whole table: listings and the pool host's recovery only, never a job's path.
        rows = self._run(
            f"SELECT kind || id FROM longtask WHERE (kind || id) >= ? AND (kind || id) < ? AND {_LIVE}",
            (prefix, prefix + "\U0010ffff", time.time()),
        ).fetchall()
        return [row[0] for row in rows]

    def sweep(self) -> int:
        """Delete expired rows (and their files); return how many.

        Reads the table in chunks, outside any transaction (WAL readers block nobody), and
        deletes what expired in each chunk in one short write transaction.
        """
        removed, after = 0, ("", "")
        while True:
            now = time.time()
            rows = self._run(
                "SELECT id, kind, expire FROM longtask WHERE (id, kind) > (?, ?) ORDER BY id, kind LIMIT ?",
                (*after, _SWEEP_CHUNK),
            ).fetchall()
            expired = [(id_, kind, now) for id_, kind, expire in rows if expire is not None and expire <= now]
            if expired:
                with self.batch():
                    removed += self._many("DELETE FROM longtask WHERE id = ? AND kind = ? AND expire <= ?", expired)
            if len(rows) < _SWEEP_CHUNK:
                break
            after = rows[-1][:2]
        index.sweep(self, time.time())
        self.empty_trash()
        return removed

    def checkpoint(self) -> None:
        """Copy the write-ahead log into the database, as far as readers allow (never waits)."""
        self.con.execute("PRAGMA wal_checkpoint(PASSIVE)")

    def empty_trash(self) -> None:
        """Remove the files of values deleted or replaced since the last call."""
        if self._run("SELECT 1 FROM longtask_trash LIMIT 1").fetchone() is None:
            return
        with self.batch():
            trash = [row[0] for row in self._run("SELECT filename FROM longtask_trash").fetchall()]
            self._run("DELETE FROM longtask_trash")
        for filename in trash:  # after the commit: a rolled-back delete keeps its file
            self.disk.remove(filename)

    def count(self) -> int:
        """Rows in the table, expired or not (tests use it to see the sweep work)."""
        return int(self._run("SELECT COUNT(*) FROM longtask").fetchone()[0])


def open_storage(directory: str, disk: type[diskcache.Disk]) -> tuple[Cache, Table]:
    """The directory's one database, as diskcache's ``Cache`` (the pool's mailbox) and the job
    table, both storing values through ``disk`` (:func:`.signed.disk_with`)."""
    cache = Cache(
        directory,
        disk=disk,
        eviction_policy="none",  # nothing in it may be evicted for space
        statistics=False,
        cull_limit=0,  # expired rows are swept by the pool host, not on each write
    )
    try:
        values = disk(directory, min_file_size=2**20, pickle_protocol=pickle.HIGHEST_PROTOCOL)
        return cache, Table(os.path.join(directory, diskcache.core.DBNAME), values)
    except BaseException:
        cache.close()
        raise
