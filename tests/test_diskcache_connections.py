"""Who closes the SQLite connections of a diskcache directory (``diskcache/connections.py``).

A thread's close when it ends, every thread's at ``close()``, what is left at the process's exit
(after the backends' own exit hooks); a forked child never closes its parent's. Python 3.13 warns
about a connection left to the garbage collector (``ResourceWarning``, an error in these tests and
in the scripts they run); the tests also look at each connection itself, which says the same on
every Python.
"""

from __future__ import annotations

import contextlib
import sqlite3
import subprocess
import sys
import threading
import typing as t
from pathlib import Path

import diskcache
import pytest

from flask_longtask.backends.diskcache.connections import Cache
from flask_longtask.backends.diskcache.table import Table

ROOT = Path(__file__).resolve().parent.parent


def is_open(con: sqlite3.Connection) -> bool:
    try:
        con.total_changes  # noqa: B018 - raises once the connection is closed
    except sqlite3.ProgrammingError:
        return False
    return True


@pytest.fixture
def opened(monkeypatch: pytest.MonkeyPatch) -> t.Iterator[list[sqlite3.Connection]]:
    """Every SQLite connection made during the test, in order."""
    made: list[sqlite3.Connection] = []
    connect = sqlite3.connect

    def recording(*args: t.Any, **kwargs: t.Any) -> sqlite3.Connection:
        con = connect(*args, **kwargs)
        made.append(con)
        return con

    monkeypatch.setattr(sqlite3, "connect", recording)
    yield made
    for con in made:  # a failed test's: not left to the collector either
        with contextlib.suppress(sqlite3.ProgrammingError):  # made in another thread
            con.close()


def open_storage(directory: str | Path) -> tuple[Table, Cache]:
    """The backend's two owners of connections to a directory's database."""
    cache = Cache(str(directory))
    return Table(str(Path(directory, diskcache.core.DBNAME)), diskcache.Disk(str(directory))), cache


@pytest.fixture
def storage(tmp_path: Path, opened: list[sqlite3.Connection]) -> t.Iterator[tuple[Table, Cache]]:
    table, cache = open_storage(tmp_path / "lt")
    yield table, cache
    table.close()
    cache.close()


def test_a_threads_connections_are_closed_as_it_ends(
    storage: tuple[Table, Cache], opened: list[sqlite3.Connection]
) -> None:
    table, cache = storage
    before = len(opened)

    def work() -> None:
        table.set("job:a", 1)
        cache.push("hello", prefix="mail")

    thread = threading.Thread(target=work)
    thread.start()
    thread.join()
    theirs = opened[before:]
    assert len(theirs) == 2  # one for the table, one for the cache
    assert not any(is_open(con) for con in theirs)
    assert table.get("job:a") == 1
    assert cache.pull(prefix="mail")[1] == "hello"


def test_close_closes_every_threads_connections(storage: tuple[Table, Cache], opened: list[sqlite3.Connection]) -> None:
    """diskcache's own ``Cache.close()`` closes only the calling thread's connection."""
    table, cache = storage
    used, closed = threading.Event(), threading.Event()

    def work() -> None:
        table.set("job:a", 1)
        cache.push("first", prefix="mail")
        used.set()
        assert closed.wait(30)
        table.set("job:b", 2)  # after the close: new connections
        cache.push("second", prefix="mail")

    thread = threading.Thread(target=work)
    thread.start()
    try:
        assert used.wait(30)
        assert table.get("job:a") == 1 and cache.get("none") is None  # this thread's, too
        table.close()
        cache.close()
        assert len(opened) >= 4  # the table's and the cache's, in each thread
        assert not any(is_open(con) for con in opened)
    finally:
        closed.set()
        thread.join()
    assert table.get_many(["job:a", "job:b"]) == [1, 2]
    assert [cache.pull(prefix="mail")[1] for _ in range(2)] == ["first", "second"]


def test_a_database_it_cannot_read_leaves_no_connection_open(tmp_path: Path, opened: list[sqlite3.Connection]) -> None:
    directory = tmp_path / "lt"
    directory.mkdir()
    (directory / diskcache.core.DBNAME).write_bytes(b"not a database, " * 1024)
    with pytest.raises(sqlite3.DatabaseError):
        Cache(str(directory))
    with pytest.raises(sqlite3.DatabaseError):
        Table(str(directory / diskcache.core.DBNAME), diskcache.Disk(str(directory)))
    assert len(opened) >= 2
    assert not any(is_open(con) for con in opened)


def run_script(script: str, *args: str) -> subprocess.CompletedProcess[str]:
    """``script`` in a new interpreter where an unclosed connection is an error (printed as the
    collector or the exit meets it: "Exception ignored ... ResourceWarning")."""
    return subprocess.run(
        [sys.executable, "-W", "error::ResourceWarning", "-c", script, *args],
        capture_output=True,
        text=True,
        timeout=90,
        cwd=ROOT,
    )


_FORK_WHILE_A_THREAD_IS_IN_A_STATEMENT = """
import os, select, sys, threading, warnings
from tests.test_diskcache_connections import open_storage

table, cache = open_storage(sys.argv[1])
table.set("job:a", 1)
cache.push("from the parent", prefix="mail")
inside, release = threading.Event(), threading.Event()

def hold():
    inside.set()
    release.wait(60)
    return 1

def busy():  # its connection's lock is held until release, by a thread the child will not have
    table.con.create_function("hold", 0, hold)
    table.con.execute("SELECT hold()").fetchone()

thread = threading.Thread(target=busy)
thread.start()
assert inside.wait(60)
with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)  # a fork with threads (3.12+)
    pid = os.fork()
if pid == 0:  # the child: connections of its own, and a normal exit
    table.set("job:child", 2)
    print("child read", table.get("job:a"), cache.pull(prefix="mail")[1], flush=True)
    sys.exit(0)
pidfd = os.pidfd_open(pid)
if select.select([pidfd], [], [], 30)[0]:
    print("child exit status", os.waitpid(pid, 0)[1], flush=True)
else:
    print("child stuck", flush=True)
    os.kill(pid, 9)
    os.waitpid(pid, 0)
release.set()
thread.join()
print("parent read", table.get("job:child"), table.con.execute("PRAGMA integrity_check").fetchone()[0], flush=True)
"""


def test_a_forked_child_never_closes_its_parents_connections(tmp_path: Path) -> None:
    """The parent's threads' states die in the child before any fork hook runs. Closing their
    connections there would wait for ever on the lock of one that a thread was using at the
    fork (or roll back the parent's transaction in the memory both map)."""
    done = run_script(_FORK_WHILE_A_THREAD_IS_IN_A_STATEMENT, str(tmp_path / "lt"))
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [
        "child read 1 from the parent",
        "child exit status 0",
        "parent read 2 ok",
    ], done.stderr
    assert done.stderr == ""


_EXIT_WITH_CONNECTIONS_OPEN = """
import atexit, sqlite3, sys, threading

made = []
connect = sqlite3.connect

def recording(*args, **kwargs):
    made.append(connect(*args, **kwargs))
    return made[-1]

sqlite3.connect = recording

def last():  # registered first, so run last
    still_open = 0
    for con in made:
        try:
            con.total_changes
            still_open += 1
        except sqlite3.ProgrammingError:
            pass
    print(f"open at the end: {still_open}", flush=True)

atexit.register(last)
from tests.test_diskcache_connections import open_storage

table, cache = open_storage(sys.argv[1])

def as_the_backend_does():  # registered after the import, as DiskcacheBackend's: run before
    table.set("job:b", 2)  # (the pool host still writes as it shuts down)
    cache.push("bye", prefix="mail")
    print("written at exit", flush=True)

atexit.register(as_the_backend_does)
table.set("job:a", 1)
cache.push("hello", prefix="mail")
started = threading.Event()

def forever():  # a daemon thread, with connections of its own, alive at exit
    table.get("job:a")
    cache.get("hello")
    started.set()
    threading.Event().wait()

threading.Thread(target=forever, daemon=True).start()
assert started.wait(30)
"""


def test_what_is_open_at_exit_is_closed_after_the_backends_exit_hooks(tmp_path: Path) -> None:
    done = run_script(_EXIT_WITH_CONNECTIONS_OPEN, str(tmp_path / "lt"))
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["written at exit", "open at the end: 0"], done.stderr
    assert done.stderr == ""
    table, cache = open_storage(tmp_path / "lt")
    try:
        assert table.get_many(["job:a", "job:b"]) == [1, 2]
        assert [cache.pull(prefix="mail")[1] for _ in range(2)] == ["hello", "bye"]
    finally:
        table.close()
        cache.close()
