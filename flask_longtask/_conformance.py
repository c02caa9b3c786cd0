"""What the conformance suite's modules share (:mod:`flask_longtask.testing`,
:mod:`flask_longtask.testing_async`): the extension their tasks are registered on, its app
factory, and two helpers. Apart, so that a worker process can import either module first."""

from __future__ import annotations

import time
import typing as t
from pathlib import Path

from flask import Flask

from . import LongTask

TIMEOUT = 30.0
_MARK = "_LONGTASK_CONFORMANCE"  # (not a LONGTASK_* key: those are settings)


def _make_app() -> Flask:
    app = Flask("flask_longtask.testing")
    app.config.update({_MARK: "conformance-app", "LONGTASK_BACKEND": "thread"})
    return app


#: The extension the suite's tasks are registered on; each test registers a fresh app on it.
longtask = LongTask(app_factory=_make_app)


def _lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


def _until(condition: t.Callable[[], t.Any], what: str, timeout: float = TIMEOUT) -> t.Any:
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.005)
