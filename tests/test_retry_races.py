"""A job's end is claimed once per attempt: a retry ends attempt N and queues attempt N+1, which
ends with its own claim. Whoever acts on a stale read of attempt N afterwards (a reader that
found it lost, a second reader retrying it, a cancel) loses to that retry and cannot end, or
retry again, the attempt that is queued now.

The races are played in order through the store's seams, on ThreadBackend and on the
DiskcacheBackend pool (whose real worker processes then run the next attempt).
"""

from __future__ import annotations

import typing as t
from pathlib import Path

import pytest
from flask import Flask

from flask_longtask import JobStatus, signals
from flask_longtask.backends import MISSING, Backend, JobRequest, ThreadBackend
from flask_longtask.backends.diskcache import DiskcacheBackend
from flask_longtask.extension import new_job_id
from flask_longtask.store import JobStore, keys
from flask_longtask.worker import owner_of
from tests import diskcache_jobs as jobs

ERROR = {"type": "ConnectionError", "message": "attempt 1 fails", "traceback": ""}


@pytest.fixture(params=["thread", "diskcache"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> t.Iterator[Backend]:
    backend: Backend = (
        ThreadBackend(workers=2) if request.param == "thread" else DiskcacheBackend(tmp_path / "lt", workers=2)
    )
    yield backend
    backend.close()


@pytest.fixture
def app(backend: Backend) -> t.Iterator[Flask]:
    app = Flask("tests.test_retry_races")
    app.config.update(TESTING=True, LONGTASK_PROGRESS_INTERVAL=0.01)
    jobs.longtask.init_app(app, backend=backend)
    with app.app_context():
        # One job first: the pool is up, and its first look at storage (which ends the jobs a
        # dead host left claimed) is over before the test claims a job by hand.
        assert jobs.add.submit(1, 1).result(timeout=30) == 2
        yield app


def running(app: Flask, task: t.Any, *args: t.Any, retries: int, time_limit: float | None = None) -> dict[str, t.Any]:
    """A job of ``task`` stored and claimed by a worker that runs its first attempt (nothing
    runs it here: it is never queued); its record as that worker read it."""
    store: JobStore = app.extensions["longtask"].store
    job_id = new_job_id()
    arguments = {
        "task": task.name,
        "module": task._module,
        "app": app.import_name,
        "args": store.backend.dumps((args, {})),
    }
    request = JobRequest(job_id, task.name, task, app)
    new = store.new_job(request, arguments, None, announce=lambda: None, time_limit=time_limit, retries=retries)
    store.backend.write_all(new.writes)
    assert store.claim(job_id, owner_of(1, 1))
    return t.cast("dict[str, t.Any]", store.backend.get(keys.job(job_id)))


def counted(counter: Path) -> int:
    return int(counter.read_text()) if counter.exists() else 0


def test_a_stale_end_of_a_retried_attempt_is_refused(app: Flask, tmp_path: Path) -> None:
    store: JobStore = app.extensions["longtask"].store
    counter = tmp_path / "n"
    attempt_1 = running(app, jobs.flaky, str(counter), 0, retries=2)
    job = store.job(attempt_1["id"])
    # A reader found attempt 1 lost and read its record; meanwhile its worker retried it.
    assert store.retry(attempt_1, ERROR, 0.05, app=app, limited=False) is True
    # The reader's end, made of what it read, comes too late: attempt 2 is not ended with it.
    assert store.finish(attempt_1, JobStatus.FAILED, app=app, error=ERROR, unless_cancelled=True) is None
    assert store.mark_lost(job.id, "no heartbeat", attempt=1, app=app) is False
    assert job.status is JobStatus.QUEUED and job.attempt == 2
    assert job.last_error == ERROR
    # The worker queues attempt 2, which runs and succeeds.
    store.backend.enqueue_after(JobRequest(job.id, jobs.flaky.name, jobs.flaky, app), 0.05)
    assert job.result(timeout=30) == 1
    assert job.attempt == 2 and counted(counter) == 1


def test_an_attempt_is_retried_once(app: Flask, tmp_path: Path) -> None:
    store: JobStore = app.extensions["longtask"].store
    counter = tmp_path / "n"
    attempt_1 = running(app, jobs.flaky, str(counter), 0, retries=2)
    job = store.job(attempt_1["id"])
    # Two processes retry the same attempt (two readers that found it past its time limit):
    # one queues attempt 2, the other finds the attempt ended and queues nothing.
    outcomes = [store.retry(attempt_1, ERROR, 0.05, app=app, limited=False) for _ in range(2)]
    assert outcomes == [True, None]
    assert job.status is JobStatus.QUEUED and job.attempt == 2  # (not 3: one retry)
    store.backend.enqueue_after(JobRequest(job.id, jobs.flaky.name, jobs.flaky, app), 0.05)
    assert job.result(timeout=30) == 1
    assert job.attempt == 2 and counted(counter) == 1


def test_two_readers_that_find_a_time_limited_attempt_lost_retry_it_once(app: Flask, tmp_path: Path) -> None:
    store: JobStore = app.extensions["longtask"].store
    counter = tmp_path / "n"
    counter.write_text("1")  # its first attempt "ran": the next one returns at once
    attempt_1 = running(app, jobs.slow_then_quick, str(counter), False, retries=1, time_limit=0.3)
    job = store.job(attempt_1["id"])
    retried: list[int] = []
    with signals.job_retrying.connected_to(lambda sender, job, error, attempt: retried.append(attempt), app):
        # Its time limit raised its flag, and its worker went silent: stopped by force.
        assert store.exceed_time_limit(job.id, 0.3)
        # Two readers saw attempt 1 running without a heartbeat. The first retries it (and
        # queues attempt 2); the second comes after and finds attempt 1 over.
        assert store.mark_lost(job.id, "no heartbeat", attempt=1, app=app) is True
        assert store.mark_lost(job.id, "no heartbeat", attempt=1, app=app) is False
        assert job.result(timeout=30) == 2
    assert retried == [2]
    assert job.attempt == 2 and counted(counter) == 2
    assert job.last_error is not None and job.last_error["type"] == "TimeLimitExceeded"


class RetryBeforeTheCancelFlag(ThreadBackend):
    """A ThreadBackend on which a job's worker retries its attempt just before a cancel of that
    job raises its flag: the cancel read the job's record before the retry."""

    retry: t.Callable[[], None] | None = None

    def set(self, key: str, value: t.Any, expire: float | None = None) -> None:
        if key.startswith(keys.cancel("")) and self.retry is not None:
            retry, self.retry = self.retry, None
            retry()
        super().set(key, value, expire)


def test_a_cancel_that_read_the_attempt_before_a_retry_ends_the_next_one(tmp_path: Path) -> None:
    backend = RetryBeforeTheCancelFlag(workers=2)
    app = Flask("tests.test_retry_races.cancel")
    jobs.longtask.init_app(app, backend=backend)
    try:
        with app.app_context():
            store: JobStore = app.extensions["longtask"].store
            attempt_1 = running(app, jobs.flaky, str(tmp_path / "n"), 0, retries=2)
            job = store.job(attempt_1["id"])
            done: list[bool | None] = []
            backend.retry = lambda: done.append(store.retry(attempt_1, ERROR, 60.0, app=app, limited=False))
            job.cancel()
            assert done == [True]
            # The cancel claimed the job queued for attempt 2, and ended that attempt.
            assert job.status is JobStatus.CANCELLED
            assert job.attempt == 2 and job.last_error == ERROR
            assert backend.get(keys.claim(job.id))["by"] == "cancel"
    finally:
        backend.close()


def test_purge_deletes_the_end_claim_of_every_attempt(app: Flask, tmp_path: Path) -> None:
    job = jobs.flaky.submit(str(tmp_path / "n"), 2)
    assert job.result(timeout=30) == 3 and job.attempt == 3
    store = app.extensions["longtask"].store
    assert app.test_cli_runner().invoke(args=["longtask", "purge"]).output == "Purged 2 finished job(s).\n"
    assert [k for k in store.backend.scan("") if job.id in k] == []
    assert store.backend.get(keys.job(job.id)) is MISSING


def test_a_retry_that_cannot_be_queued_ends_the_next_attempt_failed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The broker is away as the worker queues the retry: nothing would run the job again, so
    # the worker ends it, at the attempt its retry moved it to.
    backend = ThreadBackend(workers=1)
    app = Flask("tests.test_retry_races.refused")
    jobs.longtask.init_app(app, backend=backend)

    def refuse(request: JobRequest, delay: float) -> None:
        raise ConnectionError("broker down")

    monkeypatch.setattr(backend, "enqueue_after", refuse)
    try:
        with app.app_context():
            job = jobs.flaky.submit(str(tmp_path / "n"), 1)
            assert job.wait(timeout=30) is JobStatus.FAILED
            assert job.attempt == 2
            assert job.error is not None and job.error["message"] == "attempt 1 fails"
    finally:
        backend.close()
