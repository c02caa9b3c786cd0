"""Time limits (issue 17): counted from a job's start, seen as the cancel flag at the limit,
enforced by force after the grace where the backend can, ended failed ``TimeLimitExceeded``.

The pool's worker processes are real (DiskcacheBackend); the thread backend is cooperative.
Celery's are in ``test_celery.py``, beside its worker.
"""

from __future__ import annotations

import math
import os
import threading
import typing as t
from pathlib import Path

import pytest
from flask import Flask

from flask_longtask import JobFailedError, JobStatus, LongTask, current_job
from flask_longtask.backends import ThreadBackend
from flask_longtask.backends.diskcache import DiskcacheBackend
from tests import diskcache_jobs as jobs
from tests.helpers import wait_for

GRACE = 0.2
LIMIT = 0.3


def exists(pid: int) -> bool:
    return os.path.exists(f"/proc/{pid}")


@pytest.fixture
def pool(tmp_path: Path) -> t.Iterator[DiskcacheBackend]:
    backend = DiskcacheBackend(tmp_path / "lt", workers=2, max_workers=2)
    yield backend
    backend.close()


@pytest.fixture
def limited_app(pool: DiskcacheBackend) -> t.Iterator[Flask]:
    """An app whose jobs may run :data:`LIMIT` seconds unless their task says otherwise."""
    app = Flask("tests.test_time_limits")
    app.config.update(
        TESTING=True, LONGTASK_CANCEL_GRACE=GRACE, LONGTASK_PROGRESS_INTERVAL=0.01, LONGTASK_TIME_LIMIT=LIMIT
    )
    jobs.longtask.init_app(app, backend=pool)
    with app.app_context():
        yield app


def assert_time_limited(job: t.Any) -> None:
    assert job.status is JobStatus.FAILED
    assert job.error["type"] == "TimeLimitExceeded"
    with pytest.raises(JobFailedError) as raised:
        job.result(timeout=0)
    assert str(raised.value).startswith("TimeLimitExceeded")


def test_a_job_at_its_limit_sees_its_cancel_flag_and_fails_time_limited(limited_app: Flask, tmp_path: Path) -> None:
    pid_file = tmp_path / "pid"
    job = jobs.until_cancelled.submit(str(pid_file))
    assert job.time_limit == LIMIT
    assert job.wait(timeout=30) is JobStatus.FAILED
    assert_time_limited(job)
    # It stopped on its own at the flag: its worker was not stopped by force, not even once the
    # grace has passed (both workers run a job longer than the grace meanwhile).
    pid = int(pid_file.read_text())
    assert [j.result(timeout=30) for j in [jobs.unlimited_work.submit(2 * GRACE) for _ in range(2)]] == [2 * GRACE] * 2
    backend = t.cast(DiskcacheBackend, limited_app.extensions["longtask"].backend)
    assert pid in [worker.pid for worker in backend.pool_workers() or []]


def test_a_job_that_ignores_its_limit_is_stopped_by_force_and_fails_time_limited(
    limited_app: Flask, tmp_path: Path
) -> None:
    pid_file = tmp_path / "pid"
    job = jobs.stubborn.submit(str(pid_file))
    pid = int(wait_for(lambda: pid_file.exists() and pid_file.read_text(), 30, "the job to start"))
    assert job.wait(timeout=30) is JobStatus.FAILED
    assert_time_limited(job)
    wait_for(lambda: not exists(pid), 10, "its worker process to be gone")
    assert jobs.add.submit(1, 2).result(timeout=30) == 3  # the pool goes on, a worker replaced


def test_time_in_the_queue_does_not_count(tmp_path: Path) -> None:
    backend = DiskcacheBackend(tmp_path / "lt", workers=1, max_workers=1)
    app = Flask("tests.test_time_limits")
    app.config.update(TESTING=True, LONGTASK_CANCEL_GRACE=GRACE, LONGTASK_TIME_LIMIT=LIMIT)
    jobs.longtask.init_app(app, backend=backend)
    try:
        with app.app_context():
            # The task's own limit (none: math.inf) wins over the app's; it holds the only worker
            # for longer than the other job's limit, which waits in the queue meanwhile.
            first = jobs.unlimited_work.submit(3 * LIMIT)
            second = jobs.add.submit(20, 22)
            assert first.time_limit is None and second.time_limit == LIMIT
            assert first.result(timeout=30) == 3 * LIMIT
            assert second.result(timeout=30) == 42
            assert second.started_at is not None
            assert (second.started_at - second.created_at).total_seconds() > LIMIT
    finally:
        backend.close()


def test_a_job_with_no_limit_is_not_flagged(pool: DiskcacheBackend, tmp_path: Path) -> None:
    app = Flask("tests.test_time_limits")
    app.config.update(TESTING=True, LONGTASK_CANCEL_GRACE=GRACE)
    jobs.longtask.init_app(app, backend=pool)
    with app.app_context():
        job = jobs.unlimited_work.submit(2 * LIMIT)
        assert job.time_limit is None
        assert job.result(timeout=30) == 2 * LIMIT


# -- the thread backend: cooperative ----------------------------------------------------------


def test_thread_backend_flags_a_job_at_its_limit(app: Flask, longtask: LongTask) -> None:
    seen = threading.Event()

    @longtask.task(time_limit=LIMIT)
    def slow() -> str:
        while not current_job.is_cancel_requested:
            seen.wait(0.01)  # the job's work
        return "saw the flag"

    with app.app_context():
        job = slow.submit()
        assert job.wait(timeout=30) is JobStatus.FAILED
        assert_time_limited(job)
        assert job.time_limit == LIMIT
        # Shown where an operator looks.
        out = app.test_cli_runner().invoke(args=["longtask", "jobs"])
        assert out.exit_code == 0, out.output
        line = next(line for line in out.output.splitlines() if line.startswith(job.id))
        assert "LIMIT" in out.output and f"{LIMIT:g}s" in line


def test_a_job_that_returns_before_its_limit_is_not_touched(app: Flask, longtask: LongTask) -> None:
    @longtask.task(time_limit=30)
    def quick(n: int) -> int:
        return n * 2

    with app.app_context():
        job = quick.submit(21)
        assert job.result(timeout=30) == 42
        assert not job.is_cancel_requested


# -- bad settings: a clear error where they are made -------------------------------------------


@pytest.mark.parametrize(
    ("value", "error", "match"),
    [
        (-1, ValueError, "more than 0"),
        (0, ValueError, "more than 0"),
        (math.nan, ValueError, "more than 0"),
        ("10", TypeError, "number of seconds"),
        (True, TypeError, "number of seconds"),
    ],
)
def test_a_bad_time_limit_fails_at_registration(longtask: LongTask, value: t.Any, error: type, match: str) -> None:
    with pytest.raises(error, match=match):

        @longtask.task(time_limit=value)
        def f() -> None: ...


def test_a_bad_default_time_limit_fails_at_init_app() -> None:
    app = Flask("tests.bad_limit")
    app.config["LONGTASK_TIME_LIMIT"] = "abc"
    backend = ThreadBackend(workers=1)
    try:
        with pytest.raises(TypeError, match="LONGTASK_TIME_LIMIT must be a number"):
            LongTask(app, backend=backend)
    finally:
        backend.close()
