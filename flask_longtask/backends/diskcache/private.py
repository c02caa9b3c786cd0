"""The state directory is private to the user who runs the app.

Whoever can write the directory can make the app unpickle what they wrote, and whoever can read
it reads every job's arguments and results. So :func:`prepare` makes it ``0700``, or accepts an
existing one only if this user owns it and nobody else may write to it (one that others may read,
from before this check, is tightened: itself ``0700``, everything in it ``0600``/``0700``); it
refuses anything else with a :class:`~flask_longtask.LongTaskError` that names the directory and
the fix. Inside, every file is made ``0600`` and every directory ``0700`` whatever the umask:
the database first (SQLite gives its ``-wal`` and ``-shm`` files the database's mode), value
files and their directories by :class:`PrivateDisk`, and the pool's lock, FIFO and counters by
their own ``os.open``/``os.mkfifo`` with ``0o600``.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import stat
import typing as t

import diskcache

from ...exceptions import LongTaskError

#: The database's file name (diskcache's), and the files SQLite keeps beside it.
DATABASE = diskcache.core.DBNAME
_SQLITE_FILES = (DATABASE, f"{DATABASE}-wal", f"{DATABASE}-shm")


def prepare(directory: str) -> None:
    """Make ``directory`` private (see the module), or raise :class:`LongTaskError`."""
    parent = os.path.dirname(directory)
    if parent:
        os.makedirs(parent, exist_ok=True)  # (the instance folder: as Flask would make it)
    with contextlib.suppress(FileExistsError):
        os.mkdir(directory, 0o700)
        os.chmod(directory, 0o700)  # (whatever the umask)
    info = os.stat(directory)
    if not stat.S_ISDIR(info.st_mode):
        raise LongTaskError(f"The job state directory {directory!r} is not a directory.")
    if info.st_uid != os.geteuid():
        raise LongTaskError(
            f"The job state directory {directory!r} belongs to another user (uid {info.st_uid}):"
            " whoever owns it could run code in this app. Remove it, or set LONGTASK_DISKCACHE_DIR"
            " to a directory of your own."
        )
    if info.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise LongTaskError(
            f"The job state directory {directory!r} is writable by other users (mode"
            f" {stat.S_IMODE(info.st_mode):o}): whoever writes to it could run code in this app."
            f" Make it private (chmod 700 {directory!r}; check what is in it) or remove it."
        )
    if info.st_mode & 0o077:
        _tighten(directory)  # made by an older version, under the umask
    database = os.path.join(directory, DATABASE)
    with contextlib.suppress(FileExistsError):
        os.close(os.open(database, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600))
    for name in _SQLITE_FILES:
        _private(os.path.join(directory, name), 0o600)


def _tighten(directory: str) -> None:
    """Take every permission of others off ``directory`` and what it holds (no symlink followed)."""
    for root, dirs, files in os.walk(directory):
        for name in dirs:
            _private(os.path.join(root, name), 0o700)
        for name in files:
            _private(os.path.join(root, name), 0o600)
    os.chmod(directory, 0o700)


def _private(path: str, mode: int) -> None:
    """``chmod`` the file or directory at ``path`` (if any, and not a symlink) to ``mode``."""
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISLNK(info.st_mode) and stat.S_IMODE(info.st_mode) != mode:
        os.chmod(path, mode)


class PrivateDisk(diskcache.Disk):  # type: ignore[misc]
    """diskcache's :class:`~diskcache.Disk`, whose value files are ``0600`` in ``0700``
    directories whatever the umask (diskcache's own uses ``open()`` and ``os.makedirs``)."""

    def _write(self, full_path: str, iterator: t.Iterable[t.Any], mode: str, encoding: str | None = None) -> int:
        full_dir = os.path.dirname(full_path)
        for count in range(1, 11):
            with contextlib.suppress(OSError):  # (two levels: makedirs' mode is for the last only)
                os.mkdir(os.path.dirname(full_dir), 0o700)
            with contextlib.suppress(OSError):
                os.mkdir(full_dir, 0o700)
            try:
                # Another cache may have deleted the directory before the file could be opened.
                fd = os.open(full_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
            except OSError:
                if count == 10:
                    raise
                continue
            with open(fd, mode.replace("x", "w"), encoding=encoding) as writer:
                size = 0
                for chunk in iterator:
                    size += len(chunk)
                    writer.write(chunk)
                return size
        raise AssertionError("unreachable")  # pragma: no cover


def lock_pool(directory: str, name: str, script: str | None) -> int | None:
    """Take the pool's lock file ``name`` in ``directory`` (made private first), and write in it
    who holds it: this process's id and ``script`` (read by :func:`.scripts.holder`). Its
    descriptor, which holds the lock until it is closed; ``None`` if another process holds it."""
    prepare(directory)
    fd = os.open(os.path.join(directory, name), os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n{script or ''}\n".encode())
    except BaseException:
        with contextlib.suppress(OSError):
            os.close(fd)
        raise
    return fd
