"""What each browser page sees of a job, in headless Chromium (``tests/dash_apps/pages.py``).

Each test runs on the diskcache backend and on Celery (a real redis-server and Celery worker),
against one server per backend: progress reaches a page once per value, a job reads the
request's cookies, and shared jobs (``cache_by``) survive a page that cancels or starts again,
while jobs without ``cache_by`` are never shared.
"""

from __future__ import annotations

import contextlib
import sys
import typing as t
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest

from .browser import chrome, free_port, job_polls, live_server_process, open_chrome
from .services import start_redis, stop
from .test_dash_examples import celery_worker_process, click, text, until

if t.TYPE_CHECKING:  # pragma: no cover
    from selenium.webdriver.chrome.webdriver import WebDriver

__all__ = ["chrome"]  # a fixture: importing it here is how pytest finds it

ROOT = Path(__file__).resolve().parent.parent
LAUNCH = uuid.uuid4().hex[:8]

pytestmark = [
    pytest.mark.xdist_group("dash-pages"),
    pytest.mark.parametrize("server", ["diskcache", "celery"], indirect=True, scope="module"),
]


@dataclass
class Server:
    url: str
    dir: Path

    def runs(self, value: str) -> list[str]:
        """What the run log says of the jobs for ``value``: ``start``, ``end``, ``stopped``."""
        log = self.dir / "runs.log"
        lines = log.read_text().splitlines() if log.exists() else []
        return [line.split()[0] for line in lines if line.split()[1] == value]

    def release(self, value: str) -> None:
        """Let the jobs for ``value`` end."""
        (self.dir / value).touch()


@pytest.fixture(scope="module")
def server(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> t.Iterator[Server]:
    backend = request.param
    tmp = tmp_path_factory.mktemp(f"dash-pages-{backend}")
    env = {
        "FLASK_LONGTASK_BACKEND": backend,
        "FLASK_LONGTASK_DISKCACHE_DIR": str(tmp / "longtask"),
        "FLASK_LONGTASK_WORKERS": "4",
        "DASH_TEST_DIR": str(tmp),
        "DASH_TEST_LAUNCH": LAUNCH,
        "PYTHONPATH": str(ROOT),
    }
    with contextlib.ExitStack() as stack:
        if backend == "celery":
            proc, url = start_redis(tmp)
            stack.callback(stop, proc)
            env["FLASK_LONGTASK_CELERY_BROKER_URL"] = url
            worker = [sys.executable, "-m", "flask", "--app", "tests.dash_apps.pages:server", "longtask", "worker"]
            stack.enter_context(celery_worker_process(worker, {**env, "FLASK_LONGTASK_WORKERS": "8"}, tmp))
        port = free_port()
        cmd = [sys.executable, "-m", "tests.dash_apps.serve", "tests.dash_apps.pages", "--port", str(port)]
        yield Server(stack.enter_context(live_server_process(cmd, port, env=env, cwd=ROOT)), tmp)


def new_value() -> str:
    return uuid.uuid4().hex[:12]


def start(driver: WebDriver, name: str, value: str) -> None:
    """Type ``value`` and click Go; return once the page polls for its job (it has its handle:
    a Cancel or a new start before that would not name the job, in Dash's own managers too)."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    field = until(driver, lambda d: d.find_elements(By.ID, f"{name}-in"), "the page")[0]
    field.send_keys(Keys.CONTROL, "a")  # (typing replaces the selection: React sees each key)
    field.send_keys(value)
    until(driver, lambda d: d.find_element(By.ID, f"{name}-in").get_attribute("value") == value, "the input")
    before = job_polls(driver)
    click(driver, f"{name}-go")
    until(driver, lambda d: text(d, f"{name}-status") == "running", "the job to run")
    until(driver, lambda d: job_polls(d) > before, "the page to poll for its job")


def test_a_chained_callback_gets_each_progress_value_once(server: Server, chrome: WebDriver) -> None:
    # Five values, 0.3 s apart, polled every 0.1 s: with every poll carrying the latest value
    # (as before), the chained callback fired about fifteen times, with repeats.
    chrome.get(server.url)
    click(chrome, "count-go")
    until(chrome, lambda d: text(d, "count-out") == "counted", "the result")
    until(chrome, lambda d: text(d, "count-log").endswith("step5"), "the final value")  # never lost
    log = text(chrome, "count-log").split(",")
    assert log == sorted(set(log)), log  # each value once, in order
    assert int(text(chrome, "count-calls")) == len(log)
    assert set(log) <= {f"step{i}" for i in range(1, 6)}


def test_a_background_job_reads_the_cookie_a_callback_set(server: Server, chrome: WebDriver) -> None:
    chrome.get(server.url)
    click(chrome, "cookie-set")
    until(chrome, lambda d: text(d, "cookie-set-out") == "set", "the cookie")
    click(chrome, "cookie-use")
    until(chrome, lambda d: text(d, "cookie-out") != "", "the job's answer")
    assert text(chrome, "cookie-out") == f"user-{LAUNCH} at /_dash-update-component from 127.0.0.1"


def test_a_shared_job_outlives_a_page_that_cancels_it(server: Server, chrome: WebDriver, tmp_path: Path) -> None:
    value = new_value()
    with open_chrome(tmp_path / "other") as other:
        for driver in (chrome, other):
            driver.get(server.url)
            start(driver, "shared", value)
        until(chrome, lambda d: server.runs(value) == ["start"], "one job for both pages (cache_by)")
        click(chrome, "shared-cancel")
        until(chrome, lambda d: text(d, "shared-status") == "idle", "the cancelling page's spinner to stop")
        assert text(other, "shared-status") == "running"
        server.release(value)
        until(other, lambda d: text(d, "shared-out") == f"result {value}", "the other page's result")
        until(other, lambda d: text(d, "shared-status") == "idle", "the other page's spinner to stop")
    assert text(chrome, "shared-out") == ""  # the page that left gets nothing
    assert server.runs(value) == ["start", "end"]  # never cancelled, run once


def test_a_shared_job_outlives_a_page_that_starts_again(server: Server, chrome: WebDriver, tmp_path: Path) -> None:
    first, second = new_value(), new_value()
    with open_chrome(tmp_path / "other") as other:
        for driver in (chrome, other):
            driver.get(server.url)
            start(driver, "shared", first)
        # The callback again, with other inputs: Dash cancels the page's old job (oldJob).
        start(chrome, "shared", second)
        until(chrome, lambda d: server.runs(second) == ["start"], "the second job")
        server.release(first)
        until(other, lambda d: text(d, "shared-out") == f"result {first}", "the other page's result")
        assert text(chrome, "shared-out") == ""  # the page left the first job
        server.release(second)
        until(chrome, lambda d: text(d, "shared-out") == f"result {second}", "the second result")
    assert server.runs(first) == ["start", "end"]
    assert server.runs(second) == ["start", "end"]


def test_without_cache_by_equal_requests_run_apart(server: Server, chrome: WebDriver, tmp_path: Path) -> None:
    value = new_value()
    with open_chrome(tmp_path / "other") as other:
        for driver in (chrome, other):
            driver.get(server.url)
            start(driver, "plain", value)
        until(chrome, lambda d: server.runs(value) == ["start", "start"], "two jobs")
        server.release(value)
        for driver in (chrome, other):
            until(driver, lambda d: text(d, "plain-out") == f"result {value}", "each page's result")
    assert server.runs(value) == ["start", "start", "end", "end"]
