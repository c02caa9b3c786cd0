"""Every value the diskcache backend reads back is checked before it is unpickled (issue 18).

The attacks write ``cache.db`` directly, as whoever could write the directory would: a pickle
that runs code when loaded, a blob signed with another key, a row that names a file elsewhere.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import pwd
import sqlite3
import stat
import typing as t
from pathlib import Path

import pytest
from flask import Flask

from flask_longtask import JobStatus, LongTaskError, TamperedValueError
from flask_longtask.backends.diskcache import DiskcacheBackend, fifo
from flask_longtask.backends.diskcache.signed import key_file
from tests import diskcache_jobs as jobs
from tests.helpers import wait_for


class Planted:
    """A value whose unpickling creates a file (it could run anything)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> t.Any:
        return (Path.touch, (self.marker,))


def rewrite(directory: Path, key: str, mode: int, value: bytes, filename: str | None = None) -> None:
    """Replace the stored value of ``key`` in the job table, as another writer of the file would."""
    i = key.find(":") + 1
    with contextlib.closing(sqlite3.connect(directory / "cache.db")) as con, con:
        changed = con.execute(
            "UPDATE longtask SET mode = ?, filename = ?, value = ? WHERE id = ? AND kind = ?",
            (mode, filename, value, key[i:], key[:i]),
        ).rowcount
    assert changed == 1


def pool_app(backend: DiskcacheBackend, **config: t.Any) -> Flask:
    app = Flask("tests.test_diskcache_signed")
    app.config.update(TESTING=True, **config)
    jobs.longtask.init_app(app, backend=backend)
    return app


@pytest.fixture
def pool(tmp_path: Path) -> t.Iterator[DiskcacheBackend]:
    backend = DiskcacheBackend(tmp_path / "lt", workers=1, max_workers=1)
    yield backend
    backend.close()


@pytest.mark.parametrize(
    "forgery",
    [
        pytest.param("pickle", id="a plain pickle (diskcache's own form)"),
        pytest.param("other key", id="signed with another key"),
        pytest.param("file elsewhere", id="a value file outside the directory"),
    ],
)
def test_a_rewritten_record_is_refused_and_never_unpickled(
    pool: DiskcacheBackend, tmp_path: Path, forgery: str
) -> None:
    marker = tmp_path / "code-ran"
    pool_dir = Path(pool.directory)
    with pool_app(pool).app_context():
        job = jobs.add.submit(1, 2)
        assert job.result(timeout=30) == 3
        if forgery == "pickle":
            rewrite(pool_dir, f"job:{job.id}", 4, pickle.dumps(Planted(marker)))
        elif forgery == "other key":
            other = DiskcacheBackend(tmp_path / "other", embedded=False, secret_key="not this app's")
            other.set("probe", Planted(marker))
            with contextlib.closing(sqlite3.connect(tmp_path / "other" / "cache.db")) as con:
                (blob,) = con.execute("SELECT value FROM longtask WHERE kind = 'probe'").fetchone()
            other.close()
            rewrite(pool_dir, f"job:{job.id}", 1, blob)
        else:
            outside = tmp_path / "outside.val"
            outside.write_bytes(pickle.dumps(Planted(marker)))
            rewrite(pool_dir, f"job:{job.id}", 2, b"", filename=str(outside))
        with pytest.raises(TamperedValueError, match="Nothing of it was unpickled") as raised:
            _ = jobs.longtask.get_job(job.id).status
        assert str(pool_dir) in str(raised.value)
    assert not marker.exists()


def test_a_tampered_request_fails_its_job_and_runs_nothing(tmp_path: Path) -> None:
    """A queued job's arguments rewritten before a worker reads them: the job ends failed."""
    backend = DiskcacheBackend(tmp_path / "lt", workers=1, max_workers=1)
    marker = tmp_path / "code-ran"
    gate = tmp_path / "gate"
    try:
        with pool_app(backend).app_context():
            first = jobs.wait_for_file.submit(str(gate))  # holds the only worker
            wait_for(lambda: first.status is JobStatus.RUNNING, 30, "the first job to run")
            job = jobs.add.submit(1, 2)
            rewrite(Path(backend.directory), f"request:{job.id}", 4, pickle.dumps(Planted(marker)))
            gate.touch()
            assert first.result(timeout=30) == "done"
            assert job.wait(timeout=30) is JobStatus.FAILED
            assert job.error is not None and job.error["type"] == "flask_longtask.exceptions.TamperedValueError"
            assert jobs.add.submit(2, 3).result(timeout=30) == 5  # the pool goes on
    finally:
        backend.close()
    assert not marker.exists()


def test_a_forged_mailbox_message_is_dropped_and_the_others_are_read(tmp_path: Path) -> None:
    marker = tmp_path / "code-ran"
    backend = DiskcacheBackend(tmp_path / "lt", embedded=False)  # (no pool here reads the mailbox first)
    cache = backend.cache
    cache.push(b"q " + b"a" * 32, prefix=fifo.MAILBOX)
    cache.push(b"forged", prefix=fifo.MAILBOX)
    cache.push(b"q " + b"b" * 32, prefix=fifo.MAILBOX)
    second = "SELECT rowid FROM Cache ORDER BY key LIMIT 1 OFFSET 1"
    with contextlib.closing(sqlite3.connect(Path(backend.directory) / "cache.db")) as con, con:
        con.execute(f"UPDATE Cache SET mode = 4, value = ? WHERE rowid = ({second})", (pickle.dumps(Planted(marker)),))
    try:
        messages = fifo.read_mailbox(cache)
    finally:
        backend.close()
    assert [message.job_id for message in messages] == ["a" * 32, "b" * 32]  # type: ignore[union-attr]
    assert not marker.exists()


def test_workers_use_the_apps_secret_key_and_no_key_file_is_made(tmp_path: Path) -> None:
    """The worker's own app (built by the task module) sets no key: it gets the host's."""
    directory = tmp_path / "lt"
    backend = DiskcacheBackend(directory, workers=1, max_workers=1)
    try:
        with pool_app(backend, SECRET_KEY="the app's secret").app_context():
            job = jobs.echo.submit({"a": [1, 2]})
            assert job.result(timeout=30) == {"a": [1, 2]}
    finally:
        backend.close()
    assert not os.path.exists(key_file(str(directory)))
    # What another secret reads there is refused: nothing it wrote is taken on trust.
    stranger = DiskcacheBackend(directory, embedded=False, secret_key="another secret")
    try:
        with pytest.raises(TamperedValueError):
            stranger.get(f"job:{job.id}")
    finally:
        stranger.close()
    # The same secret, given as LONGTASK_SECRET_KEY (which wins over SECRET_KEY), reads it.
    reader = DiskcacheBackend(directory, embedded=False)
    pool_app(reader, LONGTASK_SECRET_KEY="the app's secret", SECRET_KEY="something else")
    try:
        assert reader.get(f"job:{job.id}")["status"] == "succeeded"
    finally:
        reader.close()


def test_without_a_secret_a_private_key_file_is_shared_by_every_process(tmp_path: Path) -> None:
    directory = tmp_path / "lt"
    backend = DiskcacheBackend(directory, workers=1, max_workers=1)
    try:
        with pool_app(backend).app_context():
            assert jobs.add.submit(20, 22).result(timeout=30) == 42  # (a worker process wrote it)
    finally:
        backend.close()
    info = os.stat(key_file(str(directory)))
    assert stat.S_IMODE(info.st_mode) == 0o600 and info.st_uid == os.geteuid() and info.st_size == 32
    assert not str(key_file(str(directory))).startswith(str(directory) + os.sep)  # (outside the directory)


def test_a_key_file_another_user_could_know_is_refused(tmp_path: Path) -> None:
    directory = tmp_path / "lt"
    path = Path(key_file(str(directory)))
    path.write_bytes(os.urandom(32))
    os.chmod(path, 0o644)
    backend = DiskcacheBackend(directory, embedded=False)
    try:
        with pytest.raises(LongTaskError, match="not this user's private key"):
            backend.set("key", "value")
        if os.geteuid() == 0:
            os.chmod(path, 0o600)
            os.chown(path, pwd.getpwnam("nobody").pw_uid, -1)
            other = DiskcacheBackend(directory, embedded=False)
            with pytest.raises(LongTaskError, match="not this user's private key"):
                other.storage_secret()
            other.close()
    finally:
        backend.close()


def test_an_http_read_of_a_rewritten_record_is_a_json_500_that_says_nothing(tmp_path: Path) -> None:
    """The attack of issue 18: an anonymous ``GET /jobs/<id>`` read (unpickled) a rewritten
    record before it checked the owner."""
    from tests import http_tasks

    marker = tmp_path / "code-ran"
    app = http_tasks.make_app()
    app.config.update(LONGTASK_HTTP_PREFIX="/api")
    backend = DiskcacheBackend(tmp_path / "lt", embedded=False)  # (nothing runs the job)
    http_tasks.longtask.init_app(app, backend=backend)
    try:
        submitted = app.test_client().post("/api/tasks/tests.http_tasks.add", json={"args": [1, 2]})
        assert submitted.status_code == 202, submitted.data
        job_id = submitted.json["id"]
        rewrite(Path(backend.directory), f"job:{job_id}", 4, pickle.dumps(Planted(marker)))
        answer = app.test_client().get(f"/api/jobs/{job_id}")  # another client, anonymous
    finally:
        backend.close()
    assert answer.status_code == 500 and answer.mimetype == "application/json"
    assert b"Tampered" not in answer.data and b"unpickled" not in answer.data and b"Traceback" not in answer.data
    assert not marker.exists()
