"""The module Celery workers import in the tests: `celery -A tests.celery_app:celery_app worker`."""

from __future__ import annotations

import os
import time

from celery import Celery
from flask import Flask, current_app

from flask_longtask import LongTask, TimeLimitExceeded, current_job, signals
from flask_longtask.backends.celery import CeleryBackend
from tests.helpers import log_retrying, retrying_log

REDIS_URL = os.environ.get("LONGTASK_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")

celery_app = Celery("tests.celery_app", broker=REDIS_URL, backend=REDIS_URL)
celery_app.conf.broker_connection_retry_on_startup = True
app = Flask("tests.celery_app")
app.config.update(WHO="celery-worker-app", LONGTASK_PROGRESS_INTERVAL=0.01)
# A test's worker may set more: LONGTASK_TEST_CONFIG_LONGTASK_HEARTBEAT_TIMEOUT=4 sets
# LONGTASK_HEARTBEAT_TIMEOUT = 4 (values are read as JSON).
app.config.from_prefixed_env("LONGTASK_TEST_CONFIG")
longtask = LongTask(app, backend=CeleryBackend(celery_app))


@longtask.task
def roundtrip(value: object) -> object:
    return value


@longtask.task
def pid_then_wait(path: str, seconds: float) -> str:
    """Write the worker process's pid, then work for a while (checking the cancel flag)."""
    with open(path, "w") as f:
        f.write(str(os.getpid()))
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if current_job.is_cancel_requested:
            return "cancel-seen"
        time.sleep(0.01)  # the job's work
    return "done"


@longtask.task
def wait_for_file(path: str, timeout: float = 60.0) -> str:
    """Run until the test creates ``path`` (the job's own work: a poll with a deadline)."""
    deadline = time.monotonic() + timeout
    while not os.path.exists(path) and time.monotonic() < deadline:
        time.sleep(0.01)  # the job's work: waiting for the test's file
    return path


@longtask.task
def note_then_wait(log: str, gate: str) -> str:
    """Append the job's id to ``log`` (one line per run), then run until ``gate`` exists."""
    with open(log, "a") as f:
        f.write(f"{current_job.id}\n")
    return wait_for_file.func(gate)


@longtask.task
def progress_steps(n: int) -> str:
    for i in range(n):
        current_job.set_progress({"step": i + 1, "of": n})
        time.sleep(0.01)  # the job's work
    return current_app.config["WHO"]


@longtask.task(time_limit=0.5)
def limited_until_cancelled(path: str) -> str:
    """Writes its pid, then works until its time limit raises its cancel flag."""
    with open(path, "w") as f:
        f.write(str(os.getpid()))
    deadline = time.monotonic() + 60
    while not current_job.is_cancel_requested:
        if time.monotonic() > deadline:
            raise TimeoutError("the cancel flag never came")
        time.sleep(0.01)  # the job's work
    return "saw the flag"


@longtask.task(time_limit=0.5)
def limited_stubborn(path: str) -> None:
    """Writes its pid, then never looks at its cancel flag: only a forced stop ends it."""
    with open(path, "w") as f:
        f.write(str(os.getpid()))
    while True:
        time.sleep(0.05)  # the job's work


def _count(counter: str) -> int:
    """Add one to the number in file ``counter`` (the attempts of a job) and return it."""
    try:
        with open(counter) as f:
            n = int(f.read()) + 1
    except FileNotFoundError:
        n = 1
    with open(counter, "w") as f:
        f.write(str(n))
    return n


# Each job_retrying signal of a job that asked (flaky's ``retrying``), sent in this process.
signals.job_retrying.connect(log_retrying)


@longtask.task(retries=2, retry_backoff=0.05, retry_on=ConnectionError)
def flaky(counter: str, failures: int, retrying: str | None = None) -> int:
    """Fails its first ``failures`` attempts, then returns the attempt's number. ``retrying``:
    a file its job_retrying signals are written to."""
    retrying_log(current_job.id, retrying)
    n = _count(counter)
    if n <= failures:
        raise ConnectionError(f"attempt {n} fails")
    return n


@longtask.task(retries=1, retry_backoff=3.0, retry_on=ConnectionError)
def fails_once(counter: str) -> int:
    """Its first attempt fails; the second, 2.25 to 3.75 s later (Celery's countdown), returns 2."""
    n = _count(counter)
    if n == 1:
        raise ConnectionError("attempt 1 fails")
    return n


@longtask.task
def stubborn(path: str) -> None:
    """Writes its pid, then never looks at its cancel flag: only a forced stop ends it."""
    with open(path, "w") as f:
        f.write(str(os.getpid()))
    while True:
        time.sleep(0.05)  # the job's work


@longtask.task(time_limit=0.5, retries=1, retry_backoff=0.05, retry_on=TimeLimitExceeded)
def stubborn_once(counter: str) -> int:
    """Its first attempt ignores its time limit until stopped by force; the second returns."""
    n = _count(counter)
    while n == 1:
        time.sleep(0.05)  # the job's work
    return n
