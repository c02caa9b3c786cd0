"""The dashboard over DiskcacheBackend, served by a real server for the browser tests.

``LONGTASK_DISKCACHE_DIR`` (required) is the directory the test's own process submits to;
``DASHBOARD_STREAMS`` is ``LONGTASK_DASHBOARD_MAX_STREAMS``. The dashboard at
``/longtask/dashboard`` lets in a browser with the cookie ``operator=yes``; a second one at
``/open`` has no ``authorize`` (and the app is not in debug mode): it answers 403. Every answer
says which process gave it (``X-Pid``): ``tests/test_metrics.py`` serves it with gunicorn.
"""

from __future__ import annotations

import os

from flask import Flask, Response, request

from tests import dashboard_jobs as jobs

app = Flask(__name__)
app.config.update(
    SECRET_KEY="dashboard-tests",
    LONGTASK_BACKEND="diskcache",
    LONGTASK_DISKCACHE_DIR=os.environ["LONGTASK_DISKCACHE_DIR"],
    LONGTASK_WORKERS=2,
    LONGTASK_MAX_WORKERS=2,
    LONGTASK_CANCEL_GRACE=0.5,
    LONGTASK_PROGRESS_INTERVAL=0.02,
    LONGTASK_DASHBOARD_REFRESH=0.2,
    LONGTASK_DASHBOARD_MAX_STREAMS=int(os.environ.get("DASHBOARD_STREAMS", "1")),
)
jobs.longtask.init_app(app)
app.register_blueprint(jobs.longtask.dashboard(authorize=lambda: request.cookies.get("operator") == "yes"))
app.register_blueprint(jobs.longtask.dashboard("/open"), name="open_dashboard")


@app.after_request
def tell_pid(response: Response) -> Response:
    response.headers["X-Pid"] = str(os.getpid())  # (which gunicorn process answered)
    return response
