"""What the benchmark's Celery worker imports: our tasks, Dash's CeleryManager jobs, a raw task."""

from __future__ import annotations

import os

from celery import Celery
from dash.background_callback import CeleryManager
from flask import Flask

from flask_longtask import LongTask, current_job
from flask_longtask.backends.celery import CeleryBackend

REDIS_URL = os.environ.get("LONGTASK_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")

celery_app = Celery("benchmarks.celery_bench_app", broker=REDIS_URL, backend=REDIS_URL)
celery_app.conf.broker_connection_retry_on_startup = True
app = Flask(__name__)
longtask = LongTask(app, backend=CeleryBackend(celery_app))
dash_manager = CeleryManager(celery_app)


def _noop() -> None:
    return None


def _progress(set_progress) -> None:  # type: ignore[no-untyped-def]
    for i in range(100):
        set_progress(i)


@longtask.task
def noop() -> None:
    return None


@longtask.task
def progress100() -> None:
    for i in range(100):
        current_job.set_progress(i)


@celery_app.task(name="bench.raw_noop")
def raw_noop() -> None:
    return None


dash_noop = dash_manager.make_job_fn(_noop, False, "bench_noop")
dash_progress = dash_manager.make_job_fn(_progress, True, "bench_progress")
