from __future__ import annotations

import os
from pathlib import Path

import pytest
from flask import Flask

from flask_longtask import LongTask
from flask_longtask.backends import ThreadBackend

from .dash_apps.upstream import dash_longtask, dash_longtask_workers  # noqa: F401 (fixtures)

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
#: Dash's async tests need dash[async] (asgiref), which would make every Dash app of this process
#: serve async views: tests/test_dash_async.py runs them in a pytest of their own, with it.
collect_ignore = [] if os.environ.get("DASH_ASYNC_TESTS") else ["async_tests"]
UPSTREAM = Path(__file__).resolve().parent / "background_callback"


def upstream_skip(item: pytest.Item) -> bool:
    """Whether Dash's own test file marks this test ``@pytest.mark.skip`` (its lcbc005: "Timeout
    often"): Dash's decision, kept with its tests, and shown in the summary as skipped."""
    return UPSTREAM in Path(str(item.fspath)).parents and item.get_closest_marker("skip") is not None


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):  # type: ignore[no-untyped-def]
    """Under CI=true a skipped test is a failed test: nothing may be silently left out."""
    outcome = yield
    report = outcome.get_result()
    if IN_CI and report.skipped and not hasattr(report, "wasxfail") and not upstream_skip(item):
        report.outcome = "failed"
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else report.longrepr
        report.longrepr = f"Skipped under CI=true, which counts as a failure: {reason}"


@pytest.hookimpl(optionalhook=True)  # (declared by dash.testing's plugin)
def pytest_setup_options():  # type: ignore[no-untyped-def]
    """Dash's hook (``dash.testing``): the options of the Chromium that ``dash_duo`` drives.

    The one tests/browser.py uses: Debian's headless Chromium and its chromedriver (named by
    ``SE_CHROMEDRIVER``, so Selenium Manager never looks for or downloads another).
    """
    from selenium.webdriver.chrome.options import Options

    from .browser import CHROMEDRIVER, CHROMIUM, CHROMIUM_FLAGS

    os.environ["SE_CHROMEDRIVER"] = CHROMEDRIVER
    options = Options()
    options.binary_location = CHROMIUM
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    return options


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
