"""The Prometheus metrics at the dashboard's prefix + ``/metrics``: what they say on one process,
and the same totals from every process of ``gunicorn -w 4`` whose pool (in one of them) runs the
jobs this test's process submits."""

from __future__ import annotations

import http.client
import os
import subprocess
import sys
from pathlib import Path

import pytest
from flask import Flask

from flask_longtask import JobStatus, LongTask
from flask_longtask.backends import ThreadBackend
from flask_longtask.backends.diskcache import DiskcacheBackend
from tests import dashboard_jobs as jobs

from .helpers import wait_for
from .services import ROOT, free_port, stop

parser = pytest.importorskip("prometheus_client.parser", reason='pip install "Flask-LongTask[metrics]"')
BIN = Path(sys.executable).parent
URL = "/longtask/dashboard/metrics"


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of a scrape, by name and labels."""
    out = {}
    for family in parser.text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def finished(scraped: dict[tuple[str, tuple[tuple[str, str], ...]], float]) -> dict[tuple[str, str], int]:
    return {
        (dict(labels)["task"], dict(labels)["status"]): int(value)
        for (name, labels), value in scraped.items()
        if name == "longtask_jobs_finished_total"
    }


def test_the_metrics_of_one_process() -> None:
    app = Flask(__name__)
    longtask = LongTask(app, backend=ThreadBackend(2))
    ok = longtask.task(lambda: 1, name="ok")
    bad = longtask.task(lambda: 1 / 0, name="bad")
    app.register_blueprint(longtask.dashboard(authorize=lambda: True))
    with app.app_context():
        for job in [ok.submit(), ok.submit(), bad.submit()]:
            job.wait(10)
    response = app.test_client().get(URL)
    assert response.status_code == 200 and response.mimetype == "text/plain"
    scraped = samples(response.get_data(as_text=True))
    assert finished(scraped) == {("ok", "succeeded"): 2, ("bad", "failed"): 1}
    assert scraped[("longtask_job_duration_seconds_count", (("task", "ok"),))] == 2
    assert scraped[("longtask_job_duration_seconds_bucket", (("le", "+Inf"), ("task", "ok")))] == 2
    assert scraped[("longtask_job_retries_total", (("task", "ok"),))] == 0
    assert scraped[("longtask_jobs", (("status", "succeeded"),))] == 2
    assert scraped[("longtask_jobs_running", ())] == 0 and scraped[("longtask_workers", ())] == 2
    assert all(name.startswith("longtask_") for name, _ in scraped)
    # Behind the dashboard's authorize, like the rest of it.
    app.blueprints.clear()
    closed = Flask(__name__)
    LongTask(closed, backend=ThreadBackend(1))
    closed.register_blueprint(closed.extensions["longtask"].longtask.dashboard(authorize=lambda: False))
    assert closed.test_client().get(URL).status_code == 403


def test_without_prometheus_client_the_page_says_how_to_get_it(monkeypatch: pytest.MonkeyPatch) -> None:
    import flask_longtask

    # As in an environment without the extra: importing flask_longtask.metrics fails.
    monkeypatch.setitem(sys.modules, "prometheus_client", None)
    monkeypatch.delitem(sys.modules, "flask_longtask.metrics", raising=False)
    monkeypatch.delattr(flask_longtask, "metrics", raising=False)
    app = Flask(__name__)
    longtask = LongTask(app, backend=ThreadBackend(1))
    app.register_blueprint(longtask.dashboard(authorize=lambda: True))
    response = app.test_client().get(URL)
    assert response.status_code == 501
    assert 'pip install "Flask-LongTask[metrics]"' in response.get_data(as_text=True)
    assert app.test_client().get("/longtask/dashboard/").status_code == 200  # the rest works


def _get(port: int, path: str) -> tuple[str, str]:
    """A GET on a new connection (gunicorn's processes take turns at them): body and X-Pid."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request("GET", path, headers={"Cookie": "operator=yes", "Connection": "close"})
        response = conn.getresponse()
        body = response.read().decode()
        assert response.status == 200, (response.status, body)
        return body, response.getheader("X-Pid") or ""
    finally:
        conn.close()


def test_every_gunicorn_process_gives_the_totals_of_the_jobs_that_ran(tmp_path: Path) -> None:
    directory = tmp_path / "longtask"
    port = free_port()
    server = subprocess.Popen(
        [str(BIN / "gunicorn"), "-w", "4", "-b", f"127.0.0.1:{port}", "--graceful-timeout", "3",
         "tests.apps.dashboard_app:app"],
        cwd=ROOT,
        env={**os.environ, "LONGTASK_DISKCACHE_DIR": str(directory), "PYTHONPATH": str(ROOT)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )  # fmt: skip
    backend = DiskcacheBackend(directory, workers=1, embedded=False, secret_key="dashboard-tests")
    app = Flask("tests.metrics_client")
    jobs.longtask.init_app(app, backend=backend)
    try:
        wait_for(lambda: _answers(port), 60, "gunicorn to serve")
        with app.app_context():
            done = [jobs.steps.submit(3, 0.0) for _ in range(5)]
            failed = [jobs.explode.submit("counted") for _ in range(3)]
            retried = jobs.flaky.submit(str(tmp_path / "marker"))
            slow = [jobs.steps.submit(2000, 0.01) for _ in range(2)]
            # Scraped while jobs run: the counters only grow, up to what has ended.
            wait_for(lambda: all(job.status is JobStatus.RUNNING for job in slow), 60, "the slow jobs to run")
            during = samples(_get(port, URL)[0])
            assert during[("longtask_jobs_running", ())] >= 1
            for job in slow:
                job.cancel()
            for job in [*done, *failed, retried, *slow]:
                job.wait(60)
            expected = {
                (jobs.steps.name, "succeeded"): 5,
                (jobs.explode.name, "failed"): 3,
                (jobs.flaky.name, "succeeded"): 1,
                (jobs.steps.name, "cancelled"): 2,
            }
            assert all(n <= expected[key] for key, n in finished(during).items())
            # Every job has ended: every process says so at once, the same.
            pids = set()

            def scraped_everywhere() -> bool:
                text, pid = _get(port, URL)
                scraped = samples(text)
                assert finished(scraped) == expected, pid
                assert scraped[("longtask_job_retries_total", (("task", jobs.flaky.name),))] == 1
                assert scraped[("longtask_job_duration_seconds_count", (("task", jobs.steps.name),))] == 7
                assert scraped[("longtask_jobs_running", ())] == 0
                pids.add(pid)
                return len(pids) >= 3

            wait_for(scraped_everywhere, 60, "scrapes answered by three gunicorn processes")
    finally:
        backend.close()
        stop(server)


def _answers(port: int) -> bool:
    try:
        _get(port, URL)
    except (OSError, AssertionError):
        return False
    return True
