"""Retries (issue 17): a job whose attempt raises one of its task's ``retry_on`` runs again after
a backoff, up to ``retries`` more times; queued in between; a cancel then ends it; a time-limited
attempt is retried only when ``retry_on`` names ``TimeLimitExceeded``.

On the pool (real worker processes) and ThreadBackend; Celery's are in ``test_celery.py``.
"""

from __future__ import annotations

import os
import threading
import time
import typing as t
from pathlib import Path

import pytest
from flask import Flask

from flask_longtask import JobFailedError, JobStatus, LongTask, TimeLimitExceeded, current_job, signals
from flask_longtask.backends.diskcache import DiskcacheBackend
from tests import diskcache_jobs as jobs
from tests.helpers import retrying_lines, wait_for

GRACE = 0.2


def attempts(counter: Path) -> int:
    return int(counter.read_text()) if counter.exists() else 0


def pool_app(backend: DiskcacheBackend) -> Flask:
    app = Flask("tests.test_retries")
    app.config.update(TESTING=True, LONGTASK_CANCEL_GRACE=GRACE, LONGTASK_PROGRESS_INTERVAL=0.01)
    jobs.longtask.init_app(app, backend=backend)
    return app


@pytest.fixture
def pool(tmp_path: Path) -> t.Iterator[DiskcacheBackend]:
    backend = DiskcacheBackend(tmp_path / "lt", workers=2, max_workers=2)
    with pool_app(backend).app_context():
        yield backend
    backend.close()


def test_a_failing_attempt_is_retried_until_it_succeeds(pool: DiskcacheBackend, tmp_path: Path) -> None:
    counter = tmp_path / "n"
    job = jobs.flaky.submit(str(counter), 2)
    assert job.attempt == 1 and job.retries == 2
    assert job.result(timeout=30) == 3
    assert job.attempt == 3 and attempts(counter) == 3


def test_the_pool_worker_that_retries_a_job_sends_job_retrying(pool: DiskcacheBackend, tmp_path: Path) -> None:
    # Sent by the process that queues the retry: the worker process, to the receivers connected
    # there (tests/diskcache_jobs.py connects one that writes to the file the job names).
    log = tmp_path / "retrying"
    job = jobs.flaky.submit(str(tmp_path / "n"), 2, retrying=str(log))
    assert job.result(timeout=30) == 3
    sent = retrying_lines(log)
    assert [(attempt, message) for _, attempt, message in sent] == [(2, "attempt 1 fails"), (3, "attempt 2 fails")]
    assert os.getpid() not in {pid for pid, _, _ in sent}


def test_the_last_attempts_error_is_the_jobs(pool: DiskcacheBackend, tmp_path: Path) -> None:
    counter = tmp_path / "n"
    job = jobs.flaky.submit(str(counter), 5)
    with pytest.raises(JobFailedError, match="^ConnectionError: attempt 3 fails"):
        job.result(timeout=30)
    assert job.attempt == 3 and attempts(counter) == 3  # 1 + retries=2, then no more


def test_an_error_not_in_retry_on_is_not_retried(pool: DiskcacheBackend, tmp_path: Path) -> None:
    counter = tmp_path / "n"
    job = jobs.flaky.submit(str(counter), 1, "ValueError")
    with pytest.raises(JobFailedError, match="^ValueError"):
        job.result(timeout=30)
    assert job.attempt == 1 and attempts(counter) == 1


def test_between_attempts_it_is_queued_and_a_cancel_ends_it(tmp_path: Path) -> None:
    backend = DiskcacheBackend(tmp_path / "lt", workers=1, max_workers=1)
    try:
        with pool_app(backend).app_context():
            counter = tmp_path / "n"
            job = jobs.flaky_slowly.submit(str(counter))  # retried after ~1 s
            wait_for(lambda: attempts(counter) == 1 and job.status is JobStatus.QUEUED, 30, "the first attempt to fail")
            assert job.attempt == 2  # the next one
            # Memoized: the retried job is still the one in flight for its key.
            assert jobs.flaky_slowly.submit(str(counter)) == job
            job.cancel()
            assert job.status is JobStatus.CANCELLED
            # Its retry falls due, is queued before the next job and skipped: it never runs.
            retry_at = t.cast(float, backend.get(f"job:{job.id}")["retry_at"])
            wait_for(lambda: time.time() > retry_at, 10, "the retry to fall due")
            assert jobs.add.submit(1, 1).result(timeout=30) == 2
            assert attempts(counter) == 1 and job.status is JobStatus.CANCELLED
    finally:
        backend.close()


def test_a_time_limited_attempt_is_retried_when_retry_on_names_it(pool: DiskcacheBackend, tmp_path: Path) -> None:
    counter = tmp_path / "n"
    # Its second attempt (within its own limit) runs past the forced stop's deadline asked for
    # the first: that stop was for the attempt before, and must not reach this one.
    job = jobs.slow_then_quick.submit(str(counter), False, 0.25)
    assert job.result(timeout=30) == 2
    assert job.attempt == 2


def test_an_attempt_stopped_by_force_at_its_limit_is_retried_too(pool: DiskcacheBackend, tmp_path: Path) -> None:
    counter = tmp_path / "n"
    job = jobs.slow_then_quick.submit(str(counter), True)  # ignores its flag: killed at limit + grace
    assert job.result(timeout=30) == 2
    assert job.attempt == 2
    assert job.last_error is not None and job.last_error["type"] == "TimeLimitExceeded"


def test_a_waiter_does_not_spin_while_a_retry_waits_out_its_backoff(
    pool: DiskcacheBackend, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # In the host's process a waiter is woken by ends; a retried attempt's "done" is no end.
    reads = []
    get_many = DiskcacheBackend.get_many

    def counted(self: DiskcacheBackend, keys: t.Any) -> t.Any:
        reads.append(1)
        return get_many(self, keys)

    monkeypatch.setattr(DiskcacheBackend, "get_many", counted)
    job = jobs.flaky_slowly.submit(str(tmp_path / "n"))  # about a second between its attempts
    assert job.result(timeout=30) == 2
    assert len(reads) < 200  # (it polls every 50 ms at most: about 20 reads a second)


def test_a_time_limited_attempt_is_not_retried_by_default(pool: DiskcacheBackend, tmp_path: Path) -> None:
    counter = tmp_path / "n"
    job = jobs.slow_once.submit(str(counter))
    assert job.wait(timeout=30) is JobStatus.FAILED
    assert job.error is not None and job.error["type"] == "TimeLimitExceeded"
    assert job.attempt == 1 and attempts(counter) == 1


def test_a_retry_waiting_out_its_backoff_survives_a_new_host(tmp_path: Path) -> None:
    first = DiskcacheBackend(tmp_path / "lt", workers=1, max_workers=1)
    counter = tmp_path / "n"
    try:
        with pool_app(first).app_context():
            job = jobs.flaky_slowly.submit(str(counter))
            wait_for(lambda: attempts(counter) == 1 and job.status is JobStatus.QUEUED, 30, "the first attempt to fail")
    finally:
        first.close()
    second = DiskcacheBackend(tmp_path / "lt", workers=1, max_workers=1)
    try:
        with pool_app(second).app_context():
            again = jobs.longtask.get_job(job.id)
            retry_at = t.cast(float, second.get(f"job:{job.id}")["retry_at"])
            assert again.result(timeout=30) == 2
            assert again.attempt == 2
            # The new host waited out the backoff the first one had started.
            assert again.started_at is not None and again.started_at.timestamp() >= retry_at
    finally:
        second.close()


# -- ThreadBackend: the same semantics, and the signal ------------------------------------------


def test_thread_backend_retries_and_signals_each_retry(app: Flask, longtask: LongTask) -> None:
    calls: list[int] = []
    retried: list[tuple[str, int]] = []
    lock = threading.Lock()

    @longtask.task(retries=3, retry_backoff=0.01, retry_on=TimeoutError)
    def fetch() -> int:
        with lock:
            calls.append(len(calls) + 1)
            n = len(calls)
        if n < 3:
            raise TimeoutError(f"try {n}")
        return n

    def on_retry(sender: Flask, job: t.Any, error: dict[str, str], attempt: int) -> None:
        retried.append((error["message"], attempt))

    with app.app_context(), signals.job_retrying.connected_to(on_retry, app):
        job = fetch.submit()
        assert job.result(timeout=30) == 3
        assert job.attempt == 3 and job.retries == 3
        assert retried == [("try 1", 2), ("try 2", 3)]
        out = app.test_cli_runner().invoke(args=["longtask", "jobs"])
        line = next(line for line in out.output.splitlines() if line.startswith(job.id))
        assert "ATTEMPT" in out.output and " 3/4 " in line


def test_a_cancel_before_the_time_limit_stays_a_cancel(app: Flask, longtask: LongTask) -> None:
    # It looks at its flag only after its time limit has passed: the limit must not replace
    # the cancel (which would fail it TimeLimitExceeded, and retry it).
    runs = []
    cancelled = threading.Event()

    @longtask.task(time_limit=0.3, retries=1, retry_backoff=0.01, retry_on=TimeLimitExceeded)
    def busy() -> str:
        runs.append(1)
        cancelled.wait(30)
        time.sleep(0.6)  # the job's work, past its limit, ignoring the flag meanwhile
        return "done"

    with app.app_context():
        job = busy.submit()
        wait_for(lambda: runs, 30, "the job to start")
        job.cancel()
        cancelled.set()
        assert job.wait(timeout=30) is JobStatus.CANCELLED
        assert len(runs) == 1 and job.attempt == 1


def test_a_memoized_job_past_its_limit_stays_the_one_in_flight(app: Flask, longtask: LongTask) -> None:
    # Its time limit raised its cancel flag, but it will be retried: a submit of the same
    # arguments meanwhile joins it instead of starting a second job.
    flagged, release = threading.Event(), threading.Event()
    runs = []

    @longtask.task(cache_by=[], time_limit=0.2, retries=1, retry_backoff=0.01, retry_on=TimeLimitExceeded)
    def report(n: int) -> int:
        runs.append(n)
        if len(runs) == 1:
            while not current_job.is_cancel_requested:
                release.wait(0.01)  # the job's work, until its limit
            flagged.set()
            release.wait(30)
        return len(runs)

    with app.app_context():
        job = report.submit(7)
        assert flagged.wait(30)
        assert report.submit(7) == job
        release.set()
        assert job.result(timeout=30) == 2
        assert runs == [7, 7]


def test_a_task_without_retries_is_tried_once(app: Flask, longtask: LongTask) -> None:
    @longtask.task
    def boom() -> None:
        raise ConnectionError("down")

    with app.app_context():
        job = boom.submit()
        assert job.wait(timeout=30) is JobStatus.FAILED
        assert job.attempt == 1 and job.retries == 0


@pytest.mark.parametrize(
    ("options", "error", "match"),
    [
        ({"retries": -1}, ValueError, "retries .* whole number"),
        ({"retries": 1.5}, TypeError, "retries .* whole number"),
        ({"retries": 1001}, ValueError, "retries .* from 0 to 1000"),
        ({"retry_backoff": "1"}, TypeError, "retry_backoff .* seconds"),
        ({"retry_backoff": -1}, ValueError, "retry_backoff .* seconds"),
        ({"retry_backoff": float("inf")}, ValueError, "retry_backoff .* seconds"),
        ({"retry_on": (ValueError, "x")}, TypeError, "retry_on .* exception class"),
        ({"retry_on": ()}, TypeError, "retry_on .* exception class"),
    ],
)
def test_bad_retry_options_fail_at_registration(
    longtask: LongTask, options: dict[str, t.Any], error: type, match: str
) -> None:
    with pytest.raises(error, match=match):

        @longtask.task(**options)
        def f() -> None: ...
