"""``flask longtask ...`` through Flask's CLI runner, on ThreadBackend."""

from __future__ import annotations

import threading

from flask import Flask

from flask_longtask import JobStatus, LongTask, current_job
from flask_longtask.backends import ThreadBackend


def test_jobs_cancel_purge(app, longtask):
    release = threading.Event()

    @longtask.task
    def waits() -> str:
        current_job.set_progress("waiting")
        while not current_job.is_cancel_requested and not release.is_set():
            release.wait(0.01)
        return "done"

    runner = app.test_cli_runner()
    assert runner.invoke(args=["longtask", "jobs"]).output == "No jobs.\n"
    with app.app_context():
        running = waits.submit()
        finished = longtask.task(lambda: 1).submit()
        finished.result(timeout=10)
        assert running.status in (JobStatus.QUEUED, JobStatus.RUNNING)

    listing = runner.invoke(args=["longtask", "jobs"]).output
    assert running.id in listing and finished.id in listing
    only_done = runner.invoke(args=["longtask", "jobs", "--status", "succeeded"]).output
    assert finished.id in only_done and running.id not in only_done

    out = runner.invoke(args=["longtask", "cancel", running.id]).output
    assert "Cancellation requested" in out
    with app.app_context():
        assert running.wait(10) is JobStatus.CANCELLED
    assert "had already ended: cancelled" in runner.invoke(args=["longtask", "cancel", running.id]).output
    missing = runner.invoke(args=["longtask", "cancel", "f" * 32])
    assert missing.exit_code != 0 and "No job" in missing.output

    assert runner.invoke(args=["longtask", "purge"]).output == "Purged 2 finished job(s).\n"
    assert runner.invoke(args=["longtask", "jobs"]).output == "No jobs.\n"


def test_worker_command_explains_backends_without_a_pool():
    app = Flask(__name__)
    LongTask(app, backend=ThreadBackend(1))
    result = app.test_cli_runner().invoke(args=["longtask", "worker"])
    assert result.exit_code != 0 and "ThreadBackend has no worker pool" in result.output


def test_commands_on_an_app_without_longtask():
    app = Flask(__name__)
    LongTask(app, backend=ThreadBackend(1))
    del app.extensions["longtask"]
    result = app.test_cli_runner().invoke(args=["longtask", "jobs"])
    assert result.exit_code != 0 and "not registered" in result.output
