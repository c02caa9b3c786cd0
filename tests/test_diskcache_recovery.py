"""The pool recovers from what goes wrong around it: a disk that is full for a while, a
message that never came, a lock file it cannot open for a while."""

from __future__ import annotations

import contextlib
import logging
import os
import resource
import signal
import sqlite3
import typing as t
from pathlib import Path

import pytest
from flask import Flask

from flask_longtask import JobStatus
from flask_longtask.backends.diskcache import DiskcacheBackend, host, recovery
from flask_longtask.store import keys

from . import diskcache_jobs as jobs
from .helpers import wait_for


def make_app(backend: DiskcacheBackend, **config: t.Any) -> Flask:
    app = Flask("tests.test_diskcache_recovery")
    app.config.update(TESTING=True, LONGTASK_PROGRESS_INTERVAL=0.01, **config)
    jobs.longtask.init_app(app, backend=backend)
    return app


@contextlib.contextmanager
def limited(which: int, soft: int) -> t.Iterator[None]:
    """This process under a lower soft limit ``which`` (``resource.RLIMIT_*``) for a while."""
    before = resource.getrlimit(which)
    resource.setrlimit(which, (soft, before[1]))
    try:
        yield
    finally:
        resource.setrlimit(which, before)


def running_worker(backend: DiskcacheBackend, job_id: str) -> int:
    workers = backend.pool_workers() or []
    return next(w.pid for w in workers if w.job_id == job_id)


def test_a_lost_job_whose_end_cannot_be_written_yet_is_ended_once_it_can(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # The disk is full when the pool sees a worker die: the job's end cannot be written. The pool
    # keeps the job and writes its end once the disk has room again (it once forgot it: the job
    # read "queued" or "running" until a restart).
    backend = DiskcacheBackend(tmp_path / "lt", workers=1, max_workers=1)
    app = make_app(backend, LONGTASK_HEARTBEAT_TIMEOUT=3600)  # no reader ends it on its own
    old_handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit: EFBIG
    caplog.set_level(logging.ERROR, logger="flask_longtask")
    try:
        with app.app_context():
            job = jobs.sleeper.submit(60)
            wait_for(lambda: job.status is JobStatus.RUNNING, 30, "the job to run")
            pid = running_worker(backend, job.id)
            with limited(resource.RLIMIT_FSIZE, 1):  # file writes fail, as on a full disk
                os.kill(pid, signal.SIGKILL)
                wait_for(lambda: "could not be written yet" in caplog.text, 30, "the pool to try to end the job")
                assert job.status is JobStatus.RUNNING  # (nothing could be written)
            assert job.wait(timeout=30) is JobStatus.FAILED
            assert job.error is not None and "killed by SIGKILL" in job.error["message"]
            assert jobs.add.submit(1, 2).result(timeout=30) == 3  # and the pool goes on
    finally:
        signal.signal(signal.SIGXFSZ, old_handler)
        backend.close()


def test_a_queued_job_the_host_was_never_told_of_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # A process stores a job and dies before it tells the host (or its message is lost): the
    # host's periodic rescan finds the job and runs it.
    monkeypatch.setattr(recovery, "RESCAN_AGE", 0.2)
    pool = DiskcacheBackend(tmp_path / "lt", workers=1, max_workers=1, cleanup_interval=0.3)
    silent = DiskcacheBackend(tmp_path / "lt", workers=1, max_workers=1, embedded=False)
    monkeypatch.setattr(silent, "enqueue", lambda request: None)  # the message that never came
    try:
        with make_app(pool).app_context():  # (once it ran a job, its first look for jobs is over)
            assert jobs.noop.submit().result(timeout=30) is None
        assert pool.is_pool_host
        with make_app(silent).app_context():
            job = jobs.add.submit(20, 22)
            assert job.result(timeout=30) == 42
    finally:
        silent.close()
        pool.close()


@pytest.fixture
def host_and_standby(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> t.Iterator[tuple[DiskcacheBackend, DiskcacheBackend]]:
    """Two backends of one directory: the first hosts its pool, the second stands by."""
    first = DiskcacheBackend(tmp_path / "lt", workers=1, max_workers=1)
    second = DiskcacheBackend(tmp_path / "lt", workers=1, max_workers=1)
    caplog.set_level(logging.WARNING, logger="flask_longtask")
    try:
        first.cache  # noqa: B018
        second.cache  # noqa: B018 - stands by
        assert first.is_pool_host and not second.is_pool_host
        yield first, second
    finally:
        first.close()
        second.close()


def test_a_standby_process_takes_over_after_its_lock_file_could_not_be_opened(
    host_and_standby: tuple[DiskcacheBackend, DiskcacheBackend], caplog: pytest.LogCaptureFixture
) -> None:
    # A standby looks for the pool's lock every tick. A moment when pool.lock cannot be opened
    # (here: the process may open no more files, as a busy web process near its limit) must not
    # end its watch for good.
    first, second = host_and_standby
    with limited(resource.RLIMIT_NOFILE, 0):  # every open() fails: EMFILE
        wait_for(lambda: "Cannot take part in hosting" in caplog.text, 10, "the standby to fail to open the lock")
    first.close()
    wait_for(lambda: second.is_pool_host, 10, "the standby to take over")
    with make_app(second).app_context():
        assert jobs.add.submit(2, 3).result(timeout=30) == 5


def test_a_database_corrupted_at_runtime_fails_clearly_and_recovers_once_removed(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # Each call fails with an error that says what to do, the log says it once (not ~60 lines a
    # second), and once the directory is removed, as the error advises, the app works again
    # without a restart: a new directory, a new pool.
    import shutil
    import time

    directory = tmp_path / "lt"
    backend = DiskcacheBackend(directory, workers=1, max_workers=1)
    app = make_app(backend)
    caplog.set_level(logging.WARNING, logger="flask_longtask")
    try:
        with app.app_context():
            assert jobs.add.submit(1, 2).result(timeout=30) == 3
            # Every page in the file, none in the write-ahead log (where readers would still find
            # the pages they need), then the file overwritten.
            with contextlib.closing(sqlite3.connect(directory / "cache.db")) as con:
                con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            with open(directory / "cache.db", "r+b") as f:
                f.write(b"not a database any more" * 1000)
            deadline = time.monotonic() + 1.0
            calls = 0
            while time.monotonic() < deadline:  # a second of requests, as a busy web server makes
                with pytest.raises(RuntimeError, match="unreadable|cannot open its directory"):
                    jobs.add.submit(1, 2)
                calls += 1
            errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
            assert calls > 10 and len(errors) <= 2, [r.getMessage()[:80] for r in errors]
            assert any("delete the directory" in r.getMessage() for r in errors)
            shutil.rmtree(directory)
            job = wait_for(lambda: _submitted(jobs.add, 2, 3), 30, "a submit to succeed again")
            assert job.result(timeout=30) == 5
        # A pool serves the new directory, for the other processes too (through its FIFO).
        other = DiskcacheBackend(directory, workers=1, max_workers=1, embedded=False)
        try:
            with make_app(other).app_context():
                assert jobs.add.submit(3, 4).result(timeout=30) == 7
        finally:
            other.close()
    finally:
        backend.close()


def _submitted(task: t.Any, *args: t.Any) -> t.Any:
    try:
        return task.submit(*args)
    except RuntimeError:
        return None


def test_a_process_that_fails_to_start_hosting_lets_go_of_the_lock(
    host_and_standby: tuple[DiskcacheBackend, DiskcacheBackend], caplog: pytest.LogCaptureFixture
) -> None:
    # The standby wins the lock but cannot make the FIFO (a directory stands in its way). It must
    # let go of the lock, or no process could ever host; and host once it can.
    import fcntl

    first, second = host_and_standby
    directory = Path(first.directory)
    (directory / "pool.fifo").unlink()
    (directory / "pool.fifo").mkdir()
    first.close()
    wait_for(lambda: "pool.fifo" in caplog.text, 10, "the standby to fail half-way")
    fd = os.open(directory / "pool.lock", os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # (raises if the standby kept it)
    finally:
        os.close(fd)
    (directory / "pool.fifo").rmdir()
    wait_for(lambda: second.is_pool_host, 10, "the standby to host once it can")
    with make_app(second).app_context():
        assert jobs.add.submit(2, 3).result(timeout=30) == 5


def test_a_storage_failure_that_repeats_is_logged_again_with_a_count(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(host, "LOG_EVERY", 0.05)  # "a minute", for the test
    directory = tmp_path / "lt"
    backend = DiskcacheBackend(directory, workers=1, max_workers=1, embedded=False)
    caplog.set_level(logging.ERROR, logger="flask_longtask")
    try:
        backend.set("k", 1)
        with contextlib.closing(sqlite3.connect(directory / "cache.db")) as con:
            con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        with open(directory / "cache.db", "r+b") as f:
            f.write(b"not a database any more" * 1000)

        def logged_again() -> bool:
            with pytest.raises(RuntimeError):
                backend.get("k")
            return any("more since the last one logged" in r.getMessage() for r in caplog.records)

        wait_for(logged_again, 10, "the failure to be logged again, with a count")
    finally:
        backend.close()


def test_a_storage_error_while_a_dead_worker_is_reaped_leaves_no_job_behind(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The pool reads a claim as it handles a worker's death (the worker claimed its job itself:
    # it came through the queue); that read fails once. The job sent ahead to that worker still
    # runs, and the worker's own job still ends.
    monkeypatch.setattr(recovery, "RESCAN_AGE", 0.2)
    backend = DiskcacheBackend(tmp_path / "lt", workers=1, max_workers=1, cleanup_interval=0.3)
    submitter = DiskcacheBackend(tmp_path / "lt", workers=1, max_workers=1, embedded=False)  # through the queue
    gate = tmp_path / "gate"
    try:
        with make_app(backend).app_context():
            assert jobs.noop.submit().result(timeout=30) is None  # the pool is up
        with make_app(submitter, LONGTASK_HEARTBEAT_TIMEOUT=3600).app_context():
            dying = jobs.hold_jobs_ahead.submit(1, str(gate), 3)
            ahead = jobs.add.submit(1, 1)
            wait_for(lambda: [w.job_id for w in backend.pool_workers() or []] == [dying.id], 30, "the job to run")
            get, failed = backend.get, []

            def get_failing_once(key: str) -> t.Any:
                if key.startswith(keys.claim("")) and not failed:
                    failed.append(key)
                    raise sqlite3.OperationalError("disk I/O error")
                return get(key)

            monkeypatch.setattr(backend, "get", get_failing_once)
            gate.touch()
            assert dying.wait(timeout=30) is JobStatus.FAILED
            assert ahead.result(timeout=30) == 2
            assert failed  # (the failure did happen)
    finally:
        submitter.close()
        backend.close()


def test_an_idle_worker_that_dies_is_replaced(tmp_path: Path) -> None:
    backend = DiskcacheBackend(tmp_path / "lt", workers=1, max_workers=1)
    try:
        with make_app(backend).app_context():
            assert jobs.noop.submit().result(timeout=30) is None
            wait_for(lambda: [w.job_id for w in backend.pool_workers() or []] == [None], 10, "the worker to be idle")
            [dead] = [w.pid for w in backend.pool_workers() or []]
            os.kill(dead, signal.SIGKILL)
            wait_for(lambda: dead not in [w.pid for w in backend.pool_workers() or []], 10, "the pool to reap it")
            assert jobs.add.submit(2, 2).result(timeout=30) == 4  # on its replacement
            assert dead not in [w.pid for w in backend.pool_workers() or []]
    finally:
        backend.close()


def test_a_forced_stop_of_a_job_the_pool_does_not_run_is_dropped(tmp_path: Path) -> None:
    # Any local process can ask the host to stop a job by force (the FIFO): one it does not run
    # stops nothing, and the pool goes on.
    backend = DiskcacheBackend(tmp_path / "lt", workers=1, max_workers=1)
    other = DiskcacheBackend(tmp_path / "lt", workers=1, max_workers=1, embedded=False)
    try:
        with make_app(backend).app_context():
            assert jobs.noop.submit().result(timeout=30) is None
            [worker] = backend.pool_workers() or []
            other.terminate("0" * 32, 0.0)
            assert jobs.add.submit(2, 2).result(timeout=30) == 4
            assert [w.pid for w in backend.pool_workers() or []] == [worker.pid]
    finally:
        other.close()
        backend.close()
