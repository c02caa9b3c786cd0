from __future__ import annotations

import os

import pytest
from flask import Flask

from flask_longtask import LongTask
from flask_longtask.backends import ThreadBackend

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):  # type: ignore[no-untyped-def]
    """Under CI=true a skipped test is a failed test: nothing may be silently left out."""
    outcome = yield
    report = outcome.get_result()
    if IN_CI and report.skipped and not hasattr(report, "wasxfail"):
        report.outcome = "failed"
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else report.longrepr
        report.longrepr = f"Skipped under CI=true, which counts as a failure: {reason}"


@pytest.fixture
def backend():
    backend = ThreadBackend(workers=4)
    yield backend
    backend.close()


@pytest.fixture
def app(backend):
    app = Flask("tests")
    app.config.update(TESTING=True, LONGTASK_PROGRESS_INTERVAL=0.01)
    app.extensions_longtask = LongTask(app, backend=backend)  # type: ignore[attr-defined]
    return app


@pytest.fixture
def longtask(app) -> LongTask:
    return app.extensions["longtask"].longtask  # type: ignore[no-any-return]
