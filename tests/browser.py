"""Real servers and a real browser for tests: Debian's headless Chromium and server subprocesses.

Use them from a test module with ``from .browser import chrome, free_port, live_server_process``
(``chrome`` is a fixture: importing it into the module makes pytest find it).

Chromium and chromedriver come from the system (``apt-get install chromium chromium-driver``,
which ``scripts/test`` does); Selenium is given the driver's path, so Selenium Manager never
downloads anything. Without them the browser tests skip, and under ``CI=true`` a skip fails.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import tempfile
import time
import typing as t
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from .services import free_port as free_port
from .services import stop

CHROMIUM = os.environ.get("LONGTASK_CHROMIUM", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("LONGTASK_CHROMEDRIVER", "/usr/bin/chromedriver")
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
)

if t.TYPE_CHECKING:  # pragma: no cover
    from selenium.webdriver.chrome.webdriver import WebDriver


@pytest.fixture
def chrome(tmp_path: Path) -> t.Iterator[WebDriver]:
    """A headless Chromium driven by Selenium, with a fresh profile; quit after the test."""
    with open_chrome(tmp_path / "chromium-profile") as driver:
        yield driver


@contextlib.contextmanager
def open_chrome(profile: Path) -> t.Iterator[WebDriver]:
    """A headless Chromium with its own profile directory (a second browser: another one)."""
    missing = [path for path in (CHROMIUM, CHROMEDRIVER) if not os.access(path, os.X_OK)]
    if missing:
        pytest.skip(f"{' and '.join(missing)} not found: apt-get install chromium chromium-driver")
    webdriver = pytest.importorskip("selenium.webdriver", reason='pip install -e ".[test]"')
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={profile}")
    options.add_argument("--window-size=1000,700")
    driver = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))
    try:
        yield driver
    finally:
        driver.quit()


def _answers_http(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1):
            return True
    except urllib.error.HTTPError:  # any HTTP status means the server is up
        return True
    except OSError:
        return False


@contextlib.contextmanager
def live_server_process(
    cmd: t.Sequence[str],
    port: int,
    *,
    path: str = "/",
    env: t.Mapping[str, str] | None = None,
    cwd: str | os.PathLike[str] | None = None,
    timeout: float = 30.0,
) -> t.Iterator[str]:
    """Run ``cmd`` (a server that listens on ``port``) and yield its base URL once it answers HTTP.

    The server runs in its own process group; on exit the whole group (the server and any
    workers it forked) is stopped by :func:`tests.services.stop`. If the
    server exits or does not answer within ``timeout`` seconds, the test fails with its output.

    :param path: the path polled until it answers (any HTTP status counts).
    :param env: extra environment variables for the server.
    """
    base = f"http://127.0.0.1:{port}"
    with tempfile.TemporaryFile() as log:
        proc = subprocess.Popen(
            list(cmd),
            cwd=cwd,
            env={**os.environ, **(env or {})},
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

        def failure(why: str) -> AssertionError:
            log.seek(0)
            return AssertionError(f"Server {list(cmd)} {why}. Its output:\n{log.read().decode(errors='replace')}")

        try:
            deadline = time.monotonic() + timeout
            delay = 0.01
            while not _answers_http(base + path):
                if proc.poll() is not None:
                    raise failure(f"exited with {proc.returncode}")
                if time.monotonic() > deadline:
                    raise failure(f"did not answer on {base} within {timeout}s")
                time.sleep(delay)
                delay = min(delay * 2, 0.1)
            yield base
        finally:
            stop(proc)


def job_polls(driver: WebDriver) -> int:
    """How many requests a Dash page has made that name a background job (its polls).

    Dash enables a callback's Cancel button when the request leaves, but the page learns its
    job's handle only from the answer: a Cancel clicked before that cancels nothing (in Dash's
    own managers too). Tests click Cancel once this count has grown.
    """
    script = "return performance.getEntriesByType('resource').filter(e => e.name.includes('job=')).length"
    return int(driver.execute_script(script))
