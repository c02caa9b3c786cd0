"""The HTTP API over DiskcacheBackend, served by real gunicorn in ``tests/test_http_limits.py``.

Configured from the environment: ``LONGTASK_DISKCACHE_DIR`` (required), and any ``FLASK_*``
variable (``app.config.from_prefixed_env()``), e.g. ``FLASK_LONGTASK_SSE_MAX_STREAMS_PER_OWNER=1``.
No process hosts a pool here (``LONGTASK_EMBEDDED_WORKER`` is off): jobs stay queued, which is
all the limits need, and costs no CPU. Every answer says which process gave it (``X-Pid``).
"""

from __future__ import annotations

import os

from flask import Response

from tests import http_tasks

app = http_tasks.make_app()
app.config.update(
    LONGTASK_BACKEND="diskcache",
    LONGTASK_DISKCACHE_DIR=os.environ["LONGTASK_DISKCACHE_DIR"],
    LONGTASK_EMBEDDED_WORKER=False,
    LONGTASK_HTTP_PREFIX="/api",
)
app.config.from_prefixed_env()
http_tasks.longtask.init_app(app)


@app.after_request
def tell_pid(response: Response) -> Response:
    response.headers["X-Pid"] = str(os.getpid())
    return response
