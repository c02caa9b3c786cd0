"""Flask-LongTask demo: start a slow job, watch its progress bar, cancel it, see its result.

Run it with ``bash scripts/demo`` from the repository root, or, in a virtualenv where
Flask-LongTask is installed, with either of::

    python examples/demo/app.py                 # --port 5000 --host 127.0.0.1
    flask --app examples/demo/app.py run

Settings come from ``FLASK_*`` environment variables (``app.config.from_prefixed_env()``), for
example ``FLASK_DEMO_STEP_SECONDS=0.05`` or ``FLASK_LONGTASK_WORKERS=4``.

The JSON routes below are the demo's own, written out to show what is underneath; a real app
can use Flask-LongTask's HTTP API instead (``LONGTASK_HTTP_PREFIX``, docs/http.md).
"""

from __future__ import annotations

import argparse
import time
import typing as t

from flask import Flask, abort, current_app, jsonify, render_template, request
from flask.typing import ResponseReturnValue

from flask_longtask import Job, JobNotFoundError, JobStatus, LongTask, current_job

app = Flask(__name__)
app.config.update(
    DEMO_STEP_SECONDS=0.1,  # how long each step of the demo job takes
    DEMO_MAX_STEPS=1000,
)
app.config.from_prefixed_env()

# No backend given: jobs run on the default backend (LONGTASK_BACKEND).
longtask = LongTask(app)


# Tasks live at module level so that a worker process can import them by name.
@longtask.task
def sum_of_squares(steps: int, step_seconds: float) -> int:
    """Add up 1² + 2² + ... + steps², one slow step at a time."""
    total = 0
    for i in range(1, steps + 1):
        if current_job.is_cancel_requested:
            return total  # the job ends "cancelled": this value is discarded
        time.sleep(step_seconds)  # stands in for real work
        total += i * i
        current_job.set_progress((i, steps))
    return total


@app.get("/")
def index() -> str:
    return render_template("index.html")


@app.post("/jobs")
def submit_job() -> ResponseReturnValue:
    data = request.get_json(silent=True) or {}
    steps = data.get("steps", 30)
    if not isinstance(steps, int) or isinstance(steps, bool) or not 1 <= steps <= app.config["DEMO_MAX_STEPS"]:
        return jsonify(error=f"'steps' must be an integer from 1 to {app.config['DEMO_MAX_STEPS']}."), 400
    # A job gets its input as arguments: it runs outside the request, so it cannot read it.
    job = sum_of_squares.submit(steps, float(current_app.config["DEMO_STEP_SECONDS"]))
    return jsonify(id=job.id), 202


def _job_or_404(job_id: str) -> Job[t.Any]:
    try:
        return longtask.get_job(job_id)
    except JobNotFoundError:
        abort(404)


@app.get("/jobs/<job_id>")
def job_state(job_id: str) -> ResponseReturnValue:
    job = _job_or_404(job_id)
    status = job.status
    error = job.error
    return jsonify(
        id=job.id,
        status=status.value,
        progress=job.progress,
        result=job.result(timeout=0) if status is JobStatus.SUCCEEDED else None,
        error=None if error is None else {"type": error["type"], "message": error["message"]},
    )


@app.post("/jobs/<job_id>/cancel")
def cancel_job(job_id: str) -> ResponseReturnValue:
    job = _job_or_404(job_id)
    job.cancel()
    return jsonify(id=job.id, status=job.status.value)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=5000)
    options = parser.parse_args()
    app.run(host=options.host, port=options.port)
