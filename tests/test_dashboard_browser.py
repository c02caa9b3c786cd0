"""The dashboard in headless Chromium, served by a real server whose worker pool runs the jobs
this test's own process submits (another process, sharing the diskcache directory).

``LONGTASK_UPDATE_SCREENSHOTS=1`` also saves the dashboard's screenshots to docs/images/
(``scripts/dashboard_screenshots`` runs just that).
"""

from __future__ import annotations

import os
import sys
import typing as t
from pathlib import Path

import pytest
from flask import Flask

from flask_longtask import JobStatus
from flask_longtask.backends.diskcache import DiskcacheBackend
from tests import dashboard_jobs as jobs

from .browser import chrome, free_port, live_server_process
from .helpers import wait_for

if t.TYPE_CHECKING:  # pragma: no cover
    from selenium.webdriver.chrome.webdriver import WebDriver

__all__ = ["chrome"]  # a fixture: importing it here is how pytest finds it

ROOT = Path(__file__).resolve().parent.parent
APP = ROOT / "tests" / "apps" / "dashboard_app.py"
SCREENSHOTS = ROOT / "docs" / "images"
UPDATE_SCREENSHOTS = os.environ.get("LONGTASK_UPDATE_SCREENSHOTS") == "1"
PREFIX = "/longtask/dashboard"

pytestmark = pytest.mark.xdist_group("dashboard-browser")


# Read and click through the page's script: the live updates replace the table's rows at any
# moment, and an element Selenium found a moment ago may be gone (stale) by the time it is used.


def status_of(driver: WebDriver, job_id: str) -> str:
    script = "var r = document.getElementById(arguments[0]); return r ? r.getAttribute('data-status') : ''"
    return str(driver.execute_script(script, f"job-{job_id}") or "")


def progress_of(driver: WebDriver, job_id: str) -> float:
    script = "var p = document.querySelector('#' + arguments[0] + ' progress'); return p ? p.value : 0"
    return float(driver.execute_script(script, f"job-{job_id}") or 0)


def listed(driver: WebDriver) -> list[str]:
    script = "return Array.from(document.querySelectorAll('tr[data-job]')).map(r => r.getAttribute('data-job'))"
    return list(driver.execute_script(script))


def click(driver: WebDriver, selector: str) -> bool:
    """Click what ``selector`` finds now (a real click event: the page's handler runs)."""
    script = "var e = document.querySelector(arguments[0]); if (e) { e.click(); } return !!e"
    return bool(driver.execute_script(script, selector))


def live(driver: WebDriver) -> str:
    return str(driver.execute_script("return document.body.getAttribute('data-live') || ''"))


@pytest.fixture
def submitter(tmp_path: Path) -> t.Iterator[Flask]:
    """This test process's app: it submits to the server's directory, and never hosts its pool."""
    backend = DiskcacheBackend(tmp_path / "longtask", workers=1, embedded=False, secret_key="dashboard-tests")
    app = Flask("tests.dashboard_client")
    jobs.longtask.init_app(app, backend=backend)
    with app.app_context():
        yield app
    backend.close()


def test_the_dashboard_follows_jobs_of_another_process(chrome: WebDriver, tmp_path: Path, submitter: Flask) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    port = free_port()
    cmd = [sys.executable, "-m", "flask", "--app", str(APP), "run", "--port", str(port), "--with-threads"]
    env = {"LONGTASK_DISKCACHE_DIR": str(tmp_path / "longtask"), "PYTHONPATH": str(ROOT), "DASHBOARD_STREAMS": "1"}
    with live_server_process(cmd, port, env=env, cwd=ROOT) as url:
        # Without authorize (and not in debug mode): 403, and the page says what to do.
        chrome.get(f"{url}/open/")
        assert "authorize" in chrome.find_element(By.ID, "refused").text
        # authorize says no without the operator's cookie.
        chrome.get(f"{url}{PREFIX}/")
        assert chrome.find_element(By.ID, "refused").text == "You may not use this dashboard."
        chrome.add_cookie({"name": "operator", "value": "yes", "path": "/"})
        if UPDATE_SCREENSHOTS:
            chrome.set_window_size(1280, 720)
        chrome.get(f"{url}{PREFIX}/")
        assert "No jobs." in chrome.find_element(By.ID, "jobs").text
        wait_for(lambda: live(chrome) == "stream", what="the page's stream")

        # Jobs submitted here appear there, live; the running one's bar moves.
        failed = jobs.explode.submit("the dashboard shows this")
        long = jobs.steps.submit(2000, 0.05)  # (cancelled below, long before its end)
        done = jobs.steps.submit(3, 0.0)
        of_steps = [long, done]
        assert failed.wait(30) is JobStatus.FAILED and done.wait(30) is JobStatus.SUCCEEDED
        wait_for(lambda: status_of(chrome, long.id) == "running", 30, "the running job on the page")
        first = wait_for(lambda: progress_of(chrome, long.id), 30, "its progress bar")
        wait_for(lambda: progress_of(chrome, long.id) > first, 30, "its progress bar to move")
        assert status_of(chrome, failed.id) == "failed" and status_of(chrome, done.id) == "succeeded"
        assert chrome.find_element(By.CSS_SELECTOR, '[data-count="failed"]').text == "1"
        if UPDATE_SCREENSHOTS:
            cancelled = jobs.steps.submit(2000, 0.05)
            of_steps.append(cancelled)
            wait_for(lambda: status_of(chrome, cancelled.id) == "running", 30, "a job to cancel")
            cancelled.cancel()
            wait_for(lambda: status_of(chrome, cancelled.id) == "cancelled", 30, "it to be cancelled")
            wait_for(lambda: progress_of(chrome, long.id) > 0.15, 60, "the bar to be well under way")
            chrome.save_screenshot(str(SCREENSHOTS / "dashboard-jobs.png"))

        # A second page: the one stream this server allows is taken, so it polls, and follows too.
        first_tab = chrome.current_window_handle
        chrome.switch_to.new_window("tab")
        chrome.get(f"{url}{PREFIX}/?status=running")
        wait_for(lambda: live(chrome) == "polling", what="the second page to poll")
        assert listed(chrome) == [long.id]
        wait_for(lambda: progress_of(chrome, long.id) > first, 30, "the polled bar to move")
        chrome.close()
        chrome.switch_to.window(first_tab)

        # Cancel, from the dashboard: the job ends cancelled, for the submitter too.
        assert click(chrome, f"#job-{long.id} button.cancel")
        wait_for(lambda: chrome.find_element(By.ID, "live").text == "Cancellation requested.", what="the cancel")
        assert long.wait(30) is JobStatus.CANCELLED
        wait_for(lambda: status_of(chrome, long.id) == "cancelled", 30, "the row to say cancelled")

        # Filters: status, task, and a search by the start of an id.
        Select(chrome.find_element(By.ID, "filter-status")).select_by_value("failed")
        chrome.find_element(By.CSS_SELECTOR, "form.filters button[type=submit]").click()
        wait_for(lambda: "status=failed" in chrome.current_url, what="the filtered page")
        assert listed(chrome) == [failed.id]
        Select(chrome.find_element(By.ID, "filter-status")).select_by_value("")
        Select(chrome.find_element(By.ID, "filter-task")).select_by_value(jobs.steps.name)
        chrome.find_element(By.CSS_SELECTOR, "form.filters button[type=submit]").click()
        wait_for(lambda: listed(chrome) == [job.id for job in reversed(of_steps)], what="the task's jobs")
        chrome.get(f"{url}{PREFIX}/?q={done.id[:24].upper()}")
        assert listed(chrome) == [done.id]

        # A failed job's page: its error and traceback.
        chrome.get(f"{url}{PREFIX}/")
        assert click(chrome, f"#job-{failed.id} td.id a")
        wait_for(lambda: chrome.find_elements(By.CSS_SELECTOR, "pre.traceback"), what="the traceback")
        trace = chrome.find_element(By.CSS_SELECTOR, "pre.traceback").text
        assert "Traceback (most recent call last)" in trace and "_deep" in trace
        assert "ValueError: the dashboard shows this" in trace
        assert chrome.find_element(By.CSS_SELECTOR, ".error-type").text == "ValueError"
        assert chrome.find_element(By.CSS_SELECTOR, "code.arguments").text == "'the dashboard shows this'"
        if UPDATE_SCREENSHOTS:
            chrome.set_window_size(1280, 1000)
            chrome.save_screenshot(str(SCREENSHOTS / "dashboard-failed-job.png"))
