"""Tasks offered over HTTP in the tests; module level, so worker processes find them by name."""

from __future__ import annotations

import math
import os
import time
import typing as t

from flask import Flask

from flask_longtask import LongTask, current_job


def make_app() -> Flask:
    app = Flask("tests.http_tasks")
    app.config.update(SECRET_KEY="test-secret", LONGTASK_BACKEND="thread", LONGTASK_PROGRESS_INTERVAL=0.01)
    return app


longtask = LongTask(app_factory=make_app)


@longtask.task(http=True)
def add(a: int, b: int = 0) -> int:
    return a + b


@longtask.task(http=True)
def steps(n: int, gate: str = "", delay: float = 0.0) -> dict[str, int]:
    """Report progress n times; then wait for ``gate`` (a file) if given, checking cancel."""
    for i in range(1, n + 1):
        current_job.set_progress({"done": i, "total": n})
        if delay:
            time.sleep(delay)  # the job's work
    while gate and not os.path.exists(gate):
        if current_job.is_cancel_requested:
            return {"done": -1, "total": n}
        time.sleep(0.005)  # the job's work: waiting for the test to open the gate
    return {"done": n, "total": n}


@longtask.task(http=True)
def boom(message: str) -> None:
    raise ValueError(message)


@longtask.task(http=True)
def opaque() -> object:
    return {1, 2}  # picklable, but not JSON


@longtask.task(http=True, cache_by=[])
def shared(x: int) -> int:
    return x * 10


@longtask.task
def private() -> str:
    return "never over HTTP"


@longtask.task(http=True)
def echo(value: t.Any) -> t.Any:
    return value


@longtask.task(http=True)
def not_finite() -> dict[str, t.Any]:
    """A result and a progress value that hold NaN and infinities, which JSON cannot carry."""
    current_job.set_progress((math.nan, 1))
    return {"nan": math.nan, "inf": math.inf, "-inf": -math.inf, "list": [1.5, math.nan], "ok": 2.0}
