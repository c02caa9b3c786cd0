"""The ``LONGTASK_*`` configuration keys and their defaults, written once.

:meth:`LongTask.init_app <flask_longtask.LongTask.init_app>` sets them on the app; a
:class:`~flask_longtask.store.JobStore` made without an app's config uses them too.
"""

from __future__ import annotations

import typing as t

#: Every ``LONGTASK_*`` key and its default, set on the app at ``init_app``.
DEFAULT_CONFIG: t.Final[t.Mapping[str, t.Any]] = {
    "LONGTASK_BACKEND": "diskcache",
    "LONGTASK_WORKERS": None,
    "LONGTASK_RESULT_EXPIRE": 24 * 3600,
    "LONGTASK_CANCEL_GRACE": 0.5,
    "LONGTASK_TIME_LIMIT": None,
    "LONGTASK_PROGRESS_INTERVAL": 0.05,
    "LONGTASK_HEARTBEAT_TIMEOUT": 30.0,
    "LONGTASK_DISKCACHE_DIR": None,
    "LONGTASK_SECRET_KEY": None,
    "LONGTASK_EMBEDDED_WORKER": True,
    "LONGTASK_CELERY_BROKER_URL": None,
    "LONGTASK_CELERY_RESULT_BACKEND": None,
    "LONGTASK_CELERY_REQUEUE_AFTER": 60.0,
    "LONGTASK_MAX_QUEUED": None,
    "LONGTASK_HTTP_PREFIX": None,
    "LONGTASK_HTTP_MAX_BODY": 1024 * 1024,
    "LONGTASK_SSE_TIMEOUT": 30.0,
    "LONGTASK_SSE_WINDOW": 600.0,
    "LONGTASK_SSE_MAX_STREAMS": 8,
    "LONGTASK_SSE_MAX_STREAMS_PER_OWNER": 4,
    "LONGTASK_HTTP_MAX_ACTIVE": 8,
    "LONGTASK_HTTP_ERRORS": None,
    "LONGTASK_MAX_WORKERS": None,
    "LONGTASK_WORKER_IDLE": 60.0,
    "LONGTASK_ASYNC_CONCURRENCY": 100,
    "LONGTASK_DASHBOARD_REFRESH": 1.0,
    "LONGTASK_DASHBOARD_MAX_STREAMS": 4,
}

#: Every key Flask-LongTask reads, whichever part reads it (the core, the backends, the HTTP API,
#: the dashboard): ``init_app`` warns about any other ``LONGTASK_*`` key (a typo, usually).
KNOWN_KEYS: t.Final[frozenset[str]] = frozenset(DEFAULT_CONFIG)

#: A valid value of each key, as the errors of :func:`flask_longtask.settings.check` show it.
EXAMPLES: t.Final[t.Mapping[str, str]] = {
    "LONGTASK_BACKEND": '"thread"',
    "LONGTASK_WORKERS": "4",
    "LONGTASK_ASYNC_CONCURRENCY": "100",
    "LONGTASK_RESULT_EXPIRE": "3600",
    "LONGTASK_CANCEL_GRACE": "0.5",
    "LONGTASK_TIME_LIMIT": "300",
    "LONGTASK_PROGRESS_INTERVAL": "0.05",
    "LONGTASK_HEARTBEAT_TIMEOUT": "30.0",
    "LONGTASK_DISKCACHE_DIR": '"/var/lib/myapp/longtask"',
    "LONGTASK_SECRET_KEY": '"a long random string"',
    "LONGTASK_EMBEDDED_WORKER": "False",
    "LONGTASK_CELERY_BROKER_URL": '"redis://localhost:6379/0"',
    "LONGTASK_CELERY_RESULT_BACKEND": '"redis://localhost:6379/1"',
    "LONGTASK_CELERY_REQUEUE_AFTER": "60.0",
    "LONGTASK_MAX_QUEUED": "1000",
    "LONGTASK_HTTP_PREFIX": '"/jobs"',
    "LONGTASK_HTTP_MAX_BODY": "1048576",
    "LONGTASK_SSE_TIMEOUT": "30.0",
    "LONGTASK_SSE_WINDOW": "600.0",
    "LONGTASK_SSE_MAX_STREAMS": "8",
    "LONGTASK_SSE_MAX_STREAMS_PER_OWNER": "4",
    "LONGTASK_HTTP_MAX_ACTIVE": "8",
    "LONGTASK_HTTP_ERRORS": '"message"',
    "LONGTASK_MAX_WORKERS": "16",
    "LONGTASK_WORKER_IDLE": "60.0",
    "LONGTASK_DASHBOARD_REFRESH": "1.0",
    "LONGTASK_DASHBOARD_MAX_STREAMS": "4",
}

#: What ``LONGTASK_MAX_QUEUED`` becomes when the HTTP API is registered on an app that left it
#: ``None``: a queue that anyone who reaches the API can add to must have an end.
HTTP_MAX_QUEUED: t.Final = 1000
