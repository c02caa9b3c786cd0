"""The SQLite connections of a diskcache directory: one per thread, each closed by its owner.

:class:`~.table.Table` (the job table) and :class:`Cache` (diskcache's, for the pool's mailbox)
give each thread its own connection, made on its first use and again in a forked child. None is
left for the garbage collector to close at a moment nobody chose (Python 3.13 warns about each,
``ResourceWarning: unclosed database``). Each is closed:

- when its thread ends: the thread's local storage holds the only strong reference to its
  :class:`ThreadState`, which closes the connection as it goes;
- by ``close()`` of its table or cache, every thread's at once;
- at the process's exit, by an exit hook that runs after the backends' own (the pool host still
  writes as it shuts down): this module is imported before the backend registers its hook, and
  exit hooks run last registered, first run;
- never in a forked child, if the parent made it. There it is the parent's, maybe in the middle
  of a statement (its lock, held by a thread the child does not have, would stop the child for
  ever) or of a transaction (closing would roll it back in the memory both processes map). SQLite
  says not to close such a connection in a child, only its descriptors. So the child closes the
  writers' lock file, keeps the connection untouched until it exits (even the interpreter's exit
  does not collect it) and makes its own.
"""

from __future__ import annotations

import atexit
import ctypes
import functools
import logging
import os
import sqlite3
import threading
import time
import typing as t
import weakref

import diskcache

#: This process's id, kept current across forks without a system call per statement.
_pid = [os.getpid()]
#: Every owner of connections in this process: closed at exit, and told about a fork.
_owners: weakref.WeakSet[Connections] = weakref.WeakSet()

# Looked up now: a forked child calls it, and looking a symbol up there could wait on a lock
# another thread of the parent held at the fork.
_incref = ctypes.pythonapi.Py_IncRef
_incref.argtypes = (ctypes.py_object,)
_incref.restype = None


class ThreadState:
    """One thread's connection, writers' lock file (``-1`` for none) and transaction state."""

    __slots__ = ("__weakref__", "_open", "begun", "con", "depth", "files", "locked", "pid", "writer")

    def __init__(self, con: sqlite3.Connection, writer: int = -1) -> None:
        self.con = con
        self.writer = writer
        self.pid = _pid[0]
        self.depth = 0  # nesting of batch()
        self.begun = False  # whether the batch's transaction has begun (it holds the locks)
        self.locked = False  # whether it holds the writers' flock
        self.files: list[str] = []  # files written for values in the open batch
        self._open = [(con, writer)]  # taken by the one close(): list.pop() is atomic

    @property
    def open(self) -> bool:
        return bool(self._open)

    def close(
        self,
        _getpid: t.Callable[[], int] = os.getpid,
        _close: t.Callable[[int], None] = os.close,
        _keep: t.Callable[[sqlite3.Connection], None] = _incref,
    ) -> None:
        """Close the connection and the lock file, once, from any thread. In a forked child
        (where the parent's thread states die before any fork hook runs) only the lock file:
        the connection is kept for ever, untouched. (What it calls is bound here, not looked up
        in the module: this also runs as the interpreter exits.)"""
        try:
            con, writer = self._open.pop()
        except IndexError:
            return
        if writer >= 0:
            try:
                _close(writer)
            except OSError:
                pass
        if self.pid == _getpid():
            try:
                con.close()
            except Exception:  # sqlite3.Error: closed it is, as far as this process can tell
                pass
        else:
            _keep(con)

    __del__ = close


class Connections:
    """The per-thread connections of one database: ``_connect()`` makes one, ``_opened()`` is
    told once it is this thread's; with ``writer_lock``, each thread also opens that file."""

    def __init__(self, writer_lock: str | None = None) -> None:
        self.writer_lock = writer_lock
        self._per_thread = threading.local()
        self._threads_lock = threading.Lock()
        self._threads: weakref.WeakSet[ThreadState] = weakref.WeakSet()
        _owners.add(self)

    def _connect(self) -> sqlite3.Connection:  # pragma: no cover - both owners define it
        raise NotImplementedError

    def _opened(self) -> None:
        """This thread's new connection is ready (``_state``): set it up."""

    @property
    def _state(self) -> ThreadState:
        state: ThreadState | None = getattr(self._per_thread, "state", None)
        if state is None or state.pid != _pid[0]:
            state = self._open_state()
        return state

    def _open_state(self) -> ThreadState:
        con = self._connect()
        try:
            writer = -1
            if self.writer_lock is not None:
                # This thread's own open file for the writers' lock: flock() is held per open file.
                writer = os.open(self.writer_lock, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except BaseException:
            con.close()
            raise
        state = self._per_thread.state = ThreadState(con, writer)
        with self._threads_lock:
            self._threads.add(state)
        try:
            self._opened()
        except BaseException:
            del self._per_thread.state
            state.close()
            raise
        return state

    def close(self) -> None:
        """Close every thread's connection; a thread that uses this again gets a new one."""
        with self._threads_lock:
            states, self._threads = list(self._threads), weakref.WeakSet()
        for state in states:
            state.close()
        self._per_thread = threading.local()

    def _forget_inherited(self) -> None:
        """In a forked child: let go of the parent's thread states (see :meth:`ThreadState.close`)."""
        for state in list(self._threads):
            state.close()
        self._threads = weakref.WeakSet()
        self._per_thread = threading.local()
        self._threads_lock = threading.Lock()


class Cache(Connections, diskcache.Cache):  # type: ignore[misc]
    """:class:`diskcache.Cache` with the connections of this module. diskcache's own keeps one
    per thread too, but its ``close()`` closes only the calling thread's and leaves the others,
    and those of ended threads, to the garbage collector (and a failed ``__init__`` leaves its
    own); in a forked child it closes the parent's."""

    def __init__(self, directory: str, *args: t.Any, **settings: t.Any) -> None:
        Connections.__init__(self)
        try:
            super(Connections, self).__init__(directory, *args, **settings)  # diskcache.Cache's
        except BaseException:
            self.close()  # a directory it cannot open, a database it cannot read
            raise

    def _connect(self) -> sqlite3.Connection:
        path = os.path.join(self._directory, diskcache.core.DBNAME)
        return sqlite3.connect(path, timeout=self._timeout, isolation_level=None, check_same_thread=False)

    def _opened(self) -> None:
        # What diskcache.Cache._con does with a new connection: the per-connection pragmas.
        try:
            settings = self._state.con.execute("SELECT key, value FROM Settings").fetchall()
        except sqlite3.OperationalError:  # no Settings table yet: __init__ makes it
            return
        for key, value in settings:
            if key.startswith("sqlite_"):
                self.reset(key, value, update=False)

    @property
    def _con(self) -> sqlite3.Connection:
        return self._state.con


def is_corruption(exc: sqlite3.DatabaseError) -> bool:
    """Whether a database error means the database is no longer one (rather than busy, a disk
    full for a while, or a misuse): "file is not a database" and "database disk image is
    malformed" (SQLITE_NOTADB and SQLITE_CORRUPT, raised as a plain ``DatabaseError``), or its
    table gone."""
    text = str(exc)
    return type(exc) is sqlite3.DatabaseError or "no such table" in text or "malformed" in text


_F = t.TypeVar("_F", bound=t.Callable[..., t.Any])


def storage_call(method: _F) -> _F:
    """A storage call of the backend: a database found corrupted (:func:`is_corruption`) is
    closed, to be reopened by the next call, and reported once a minute at most (see
    :func:`unreadable`)."""

    @functools.wraps(method)
    def guarded(self: t.Any, *args: t.Any, **kwargs: t.Any) -> t.Any:
        try:
            return method(self, *args, **kwargs)
        except sqlite3.DatabaseError as exc:
            if not is_corruption(exc):
                raise
            raise unreadable(self, exc) from exc

    return t.cast(_F, guarded)


def unreadable(backend: t.Any, exc: sqlite3.DatabaseError) -> RuntimeError:
    """The database of ``backend`` (a ``DiskcacheBackend``) was found corrupted: let go of it,
    so that the next call opens it again (a directory deleted meanwhile is created anew), and
    say so (logged once a minute at most)."""
    backend._close_storage()
    pool = backend._host
    if pool is not None and pool.replaced():  # no job may go to it now: it stops at its next tick
        pool.step_down()
    return t.cast(
        RuntimeError,
        backend._report(
            f"DiskcacheBackend: the database in {backend.directory!r} is unreadable ({exc}). It is"
            " opened again at the next call; if it stays unreadable, delete the directory (it is"
            " created anew, without the jobs it held) or set LONGTASK_DISKCACHE_DIR to another one."
        ),
    )


def _after_fork_in_child() -> None:
    _pid[0] = os.getpid()
    for owner in list(_owners):
        owner._forget_inherited()


def _close_at_exit() -> None:
    for owner in list(_owners):
        owner.close()


os.register_at_fork(after_in_child=_after_fork_in_child)
atexit.register(_close_at_exit)


class ErrorLog:
    """Make the error of a failure that a busy server may meet many times a second, and log it
    once every ``every`` seconds at most, with a count of the failures in between."""

    def __init__(self, log: logging.Logger, every: float) -> None:
        self.log, self.every = log, every
        self._lock = threading.Lock()
        self._next = 0.0  # (monotonic) when a failure is logged again
        self._suppressed = 0  # failures not logged since the last one that was

    def __call__(self, message: str) -> RuntimeError:
        with self._lock:
            now = time.monotonic()
            log, suppressed = now >= self._next, self._suppressed
            if log:
                self._next, self._suppressed = now + self.every, 0
            else:
                self._suppressed += 1
        if log:
            more = f" ({suppressed} more since the last one logged)" if suppressed else ""
            self.log.error("%s%s", message, more)
        return RuntimeError(message)
