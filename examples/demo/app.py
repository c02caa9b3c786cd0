"""Flask-LongTask demo: start a slow job, watch its progress bar, cancel it, see its result.

Run it with ``bash scripts/demo`` from the repository root, or, in a virtualenv where
Flask-LongTask is installed, with either of::

    python examples/demo/app.py                 # --port 5000 --host 127.0.0.1
    flask --app examples/demo/app.py run

Settings come from ``FLASK_*`` environment variables (``app.config.from_prefixed_env()``), for
example ``FLASK_DEMO_STEP_SECONDS=0.05``, ``FLASK_LONGTASK_WORKERS=4`` or
``FLASK_LONGTASK_BACKEND=thread``.

The page uses Flask-LongTask's HTTP API (docs/http.md): it submits with ``POST
/api/tasks/demo.sum_of_squares``, follows the job's Server-Sent Events for a live progress bar
(polling ``GET /api/jobs/<id>`` if the stream fails or the server refuses it) and cancels with
``DELETE``. The app itself is the dozen lines below.
"""

from __future__ import annotations

import argparse
import os
import time

from flask import Flask, current_app, render_template

from flask_longtask import LongTask, current_job

app = Flask(__name__)
app.config.update(
    # Jobs belong to the browser session that started them: the session needs a secret.
    SECRET_KEY=os.environ.get("FLASK_SECRET_KEY") or os.urandom(16).hex(),
    LONGTASK_HTTP_PREFIX="/api",  # the HTTP API, for tasks marked http=True
    LONGTASK_HTTP_ERRORS="message",  # a failed job's message is for the visitor (never its traceback)
    DEMO_STEP_SECONDS=0.1,  # how long each step of the demo job takes
    DEMO_MAX_STEPS=1000,
)
app.config.from_prefixed_env()

# No backend given: jobs run on the default backend (LONGTASK_BACKEND).
longtask = LongTask(app)


# Tasks live at module level so that a worker process can import them by name.
@longtask.task(name="demo.sum_of_squares", http=True)
def sum_of_squares(steps: int) -> int:
    """Add up 1² + 2² + ... + steps², one slow step at a time."""
    limit = current_app.config["DEMO_MAX_STEPS"]  # jobs run in the app context
    if not 1 <= steps <= limit:
        raise ValueError(f"steps must be from 1 to {limit}")
    pause = float(current_app.config["DEMO_STEP_SECONDS"])
    total = 0
    for i in range(1, steps + 1):
        if current_job.is_cancel_requested:
            return total  # the job ends "cancelled": this value is discarded
        time.sleep(pause)  # stands in for real work
        total += i * i
        current_job.set_progress((i, steps))
    return total


@app.get("/")
def index() -> str:
    return render_template("index.html", task=sum_of_squares.name, api=app.config["LONGTASK_HTTP_PREFIX"])


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=5000)
    options = parser.parse_args()
    app.run(host=options.host, port=options.port, threaded=True)
