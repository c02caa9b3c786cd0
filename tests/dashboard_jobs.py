"""Module-level tasks for the dashboard's tests: the pool's workers import them by name."""

from __future__ import annotations

import os
import time

from flask import Flask

from flask_longtask import LongTask, current_job
from flask_longtask.backends import ThreadBackend

longtask = LongTask()

# The app a job runs in inside a worker process (the test's server registers the same
# ``longtask`` on its own app, over the diskcache directory the workers store through).
app = Flask(__name__)
longtask.init_app(app, backend=ThreadBackend(workers=1))


@longtask.task
def steps(total: int, pause: float) -> int:
    """Report ``(i, total)`` every ``pause`` seconds; stop early, cancelled, when asked to."""
    for i in range(1, total + 1):
        if current_job.is_cancel_requested:
            return i
        current_job.set_progress((i, total))
        time.sleep(pause)
    return total


def _deep(message: str) -> None:
    raise ValueError(message)


@longtask.task
def explode(message: str) -> None:
    _deep(message)


@longtask.task(retries=1, retry_backoff=0.01, retry_on=ConnectionError)
def flaky(marker: str) -> str:
    """Fails its first attempt (it leaves ``marker`` behind), succeeds on the retry."""
    if not os.path.exists(marker):
        open(marker, "w").close()
        raise ConnectionError("the first attempt fails")
    return "retried"
