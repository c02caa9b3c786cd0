"""The state directory is private (issue 18): other local users can neither read nor plant
anything there, whatever the umask. Run as root, the tests use a real second user, ``nobody``."""

from __future__ import annotations

import contextlib
import os
import pickle
import pwd
import sqlite3
import stat
import subprocess
import typing as t
from pathlib import Path

import pytest
from flask import Flask

from flask_longtask import LongTask, LongTaskError
from flask_longtask.backends.base import MISSING
from flask_longtask.backends.diskcache import DiskcacheBackend
from tests import diskcache_jobs as jobs

BIG = 2 * 2**20  # stored in a file of its own (diskcache's min_file_size is 1 MiB here)


def as_root() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root, to act as a second user (CI runs as root: there this skip fails)")


def nobody() -> int:
    return pwd.getpwnam("nobody").pw_uid


def modes(directory: Path) -> dict[str, int]:
    """The modes of ``directory`` and everything in it (type and permissions), by relative path."""
    found = {".": directory.stat().st_mode}
    for path in directory.rglob("*"):
        try:
            found[str(path.relative_to(directory))] = path.lstat().st_mode
        except FileNotFoundError:  # (a file the pool removed meanwhile)
            pass
    return found


@pytest.fixture
def loose_umask() -> t.Iterator[None]:
    old = os.umask(0)  # the loosest: every file created with open() is 0666, every directory 0777
    try:
        yield
    finally:
        os.umask(old)


def test_everything_in_the_state_directory_is_private_whatever_the_umask(tmp_path: Path, loose_umask: None) -> None:
    directory = tmp_path / "lt"
    backend = DiskcacheBackend(directory, workers=1, max_workers=1)
    app = Flask("tests.test_diskcache_private")
    jobs.longtask.init_app(app, backend=backend)
    try:
        with app.app_context():
            # A big argument (a value file written here) and a big result (one written by the
            # worker, under the same umask).
            assert jobs.echo_under_umask.submit(b"x" * BIG, 0).result(timeout=60) == b"x" * BIG
        # SQLite removes its -wal and -shm files as the last connection closes: one stays open.
        with contextlib.closing(sqlite3.connect(directory / "cache.db")) as con:
            con.execute("SELECT count(*) FROM Cache").fetchone()
            found = modes(directory)
    finally:
        backend.close()
    assert any(name.endswith(".val") for name in found), found  # (the value files were made)
    assert {"cache.db", "cache.db-wal", "cache.db-shm"} <= set(found), found
    for name, mode in found.items():
        assert stat.S_IMODE(mode) == (0o700 if stat.S_ISDIR(mode) else 0o600), (name, oct(mode))


def test_another_user_reads_nothing(tmp_path: Path) -> None:
    as_root()
    os.chmod(tmp_path, 0o755)  # (pytest's own tmp dirs are private: open the way to ours)
    os.chmod(tmp_path.parent, 0o755)
    os.chmod(tmp_path.parent.parent, 0o755)
    directory = tmp_path / "lt"
    backend = DiskcacheBackend(directory, workers=1, max_workers=1)
    try:
        backend.set("secret", "the arguments of somebody's job")
        read = subprocess.run(
            ["cat", str(directory / "cache.db")], user="nobody", capture_output=True, timeout=30, check=False
        )
        listed = subprocess.run(["ls", str(directory)], user="nobody", capture_output=True, timeout=30, check=False)
    finally:
        backend.close()
    assert read.returncode != 0 and b"Permission denied" in read.stderr
    assert listed.returncode != 0 and b"Permission denied" in listed.stderr


class Planted:
    """What another user plants: unpickling it creates a file (it would run anything)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> t.Any:
        return (Path.touch, (self.marker,))


def test_a_directory_another_user_made_is_refused_and_nothing_in_it_is_read(tmp_path: Path) -> None:
    as_root()
    directory = tmp_path / "lt"
    marker = tmp_path / "code-ran"
    # Another user made the directory first, with a database whose values run code when read.
    planted = DiskcacheBackend(directory, embedded=False)  # (a pool would read it at once)
    planted.set("job:" + "a" * 32, Planted(marker))
    planted.close()
    assert not marker.exists()
    for path in [directory, *directory.rglob("*")]:
        os.chown(path, nobody(), -1)
    backend = DiskcacheBackend(directory, workers=1, max_workers=1)
    try:
        with pytest.raises(LongTaskError, match="belongs to another user") as raised:
            backend.get("job:" + "a" * 32)
        assert str(directory) in str(raised.value) and "LONGTASK_DISKCACHE_DIR" in str(raised.value)
        with pytest.raises(LongTaskError, match="belongs to another user"):
            backend.set("anything", 1)
    finally:
        backend.close()
    assert not marker.exists()


def test_a_directory_others_may_write_to_is_refused(tmp_path: Path) -> None:
    directory = tmp_path / "lt"
    directory.mkdir()
    os.chmod(directory, 0o777)
    backend = DiskcacheBackend(directory, workers=1, max_workers=1)
    try:
        with pytest.raises(LongTaskError, match="writable by other users") as raised:
            backend.set("anything", 1)
        assert f"chmod 700 {str(directory)!r}" in str(raised.value)
    finally:
        backend.close()
    assert list(directory.iterdir()) == []  # nothing was created in it


def test_a_readable_directory_of_this_user_is_made_private(tmp_path: Path, loose_umask: None) -> None:
    """A directory from before this check (made under a umask of 022 or looser) is tightened."""
    directory = tmp_path / "lt"
    directory.mkdir(0o755)
    (directory / "ab").mkdir(0o755)
    (directory / "ab" / "old.val").write_bytes(pickle.dumps("an old value"))
    os.chmod(directory / "ab" / "old.val", 0o644)
    backend = DiskcacheBackend(directory, workers=1, max_workers=1)
    try:
        backend.set("key", "value")
    finally:
        backend.close()
    found = modes(directory)
    assert [stat.S_IMODE(found[name]) for name in (".", "ab", "ab/old.val")] == [0o700, 0o700, 0o600], found


def test_without_a_directory_each_backend_has_a_private_one_of_its_own() -> None:
    first, second = DiskcacheBackend(workers=1), DiskcacheBackend(workers=1)
    try:
        first.set("key", "first")
        assert first.get("key") == "first" and second.get("key") is MISSING
        assert first.directory != second.directory
        for backend in (first, second):
            info = os.stat(backend.directory)
            assert info.st_uid == os.geteuid() and stat.S_IMODE(info.st_mode) == 0o700
    finally:
        first.close()
        second.close()
    assert not os.path.exists(first.directory) and not os.path.exists(second.directory)


def test_the_apps_instance_folder_holds_a_private_state_directory(tmp_path: Path, loose_umask: None) -> None:
    app = Flask("tests.test_diskcache_private", instance_path=str(tmp_path / "instance"))
    LongTask(app)
    backend = app.extensions["longtask"].backend
    try:
        backend.set("key", "value")
        assert stat.S_IMODE(os.stat(tmp_path / "instance" / "longtask").st_mode) == 0o700
    finally:
        backend.close()
