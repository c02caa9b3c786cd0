"""A small JSON app over DiskcacheBackend, served by real gunicorn and ``flask longtask worker``.

Configured from the environment: ``LONGTASK_DISKCACHE_DIR`` (required), ``LONGTASK_WORKERS``,
``LONGTASK_EMBEDDED_WORKER`` ("0" to leave the pool to ``flask longtask worker``).
"""

from __future__ import annotations

import os
import typing as t

from flask import Flask, abort, request

from flask_longtask import JobNotFoundError
from tests import diskcache_jobs as jobs

app = Flask(__name__)
app.config.update(
    LONGTASK_BACKEND="diskcache",
    LONGTASK_DISKCACHE_DIR=os.environ["LONGTASK_DISKCACHE_DIR"],
    LONGTASK_WORKERS=int(os.environ.get("LONGTASK_WORKERS", "2")),
    LONGTASK_MAX_WORKERS=int(os.environ.get("LONGTASK_WORKERS", "2")),  # (a fixed pool)
    LONGTASK_EMBEDDED_WORKER=os.environ.get("LONGTASK_EMBEDDED_WORKER", "1") == "1",
    LONGTASK_CANCEL_GRACE=0.2,
)
jobs.longtask.init_app(app)

TASKS = {name: getattr(jobs, name) for name in ("add", "noop", "whoami", "sleeper", "stubborn", "exit_now")}


@app.post("/submit/<name>")
def submit(name: str) -> dict[str, t.Any]:
    task = TASKS.get(name) or abort(404)
    body = request.get_json(silent=True) or {}
    job = task.submit(*body.get("args", []))
    return {"id": job.id, "pid": os.getpid()}


@app.get("/jobs/<job_id>")
def show(job_id: str) -> dict[str, t.Any]:
    try:
        job = jobs.longtask.get_job(job_id)
        status = job.status
    except JobNotFoundError:
        abort(404)
    answer: dict[str, t.Any] = {"status": status.value, "progress": job.progress, "pid": os.getpid()}
    if status.value == "succeeded":
        answer["result"] = job.result()
    elif status.value == "failed":
        answer["error"] = job.error
    return answer


@app.post("/jobs/<job_id>/cancel")
def cancel(job_id: str) -> dict[str, t.Any]:
    jobs.longtask.get_job(job_id).cancel()
    return {"pid": os.getpid()}
