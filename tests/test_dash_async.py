"""``async def`` background callbacks as coroutine jobs, on the pool's real worker processes: the
task the adapter makes for one, submitted as LongTaskManager submits it (Dash's own dispatch of
async callbacks needs ``dash[async]``; the job is the same)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
import typing as t
from pathlib import Path

import pytest
from flask import Flask

from flask_longtask import JobStatus
from flask_longtask.backends.diskcache import DiskcacheBackend

from .browser import chrome, free_port, live_server_process
from .dash_apps import async_callbacks
from .helpers import wait_for

TIMEOUT = 30.0

__all__ = ["chrome"]  # a fixture: importing it here is how pytest finds it


@pytest.fixture
def app(tmp_path: Path) -> t.Iterator[Flask]:
    backend = DiskcacheBackend(tmp_path / "lt", workers=1, max_workers=2)
    app = Flask("tests.test_dash_async")
    app.config.update(LONGTASK_PROGRESS_INTERVAL=0.01, LONGTASK_CANCEL_GRACE=5.0)
    async_callbacks.longtask.init_app(app, backend=backend)
    with app.app_context():
        yield app
    backend.close()


def task() -> t.Any:
    # (Dash keeps every background callback decorated so far in each manager's registry)
    registered = async_callbacks.manager.func_registry.values()
    (mine,) = [task for task in registered if task.func.__name__ == "wait_then_answer"]
    return mine


def submit(spec: dict[str, t.Any]) -> t.Any:
    # As LongTaskManager.build_cache_key submits it: the arguments, the trigger, and what only
    # travels with the job (here no ignored argument, no request context).
    return task().submit([spec], None, {"args": {}, "context": {}})


def test_an_async_callback_runs_as_a_coroutine_job_with_its_progress_and_props(app: Flask, tmp_path: Path) -> None:
    assert task().is_coroutine
    log = tmp_path / "log"
    job = submit({"log": str(log), "sleep": 0})
    assert job.result(timeout=TIMEOUT) != os.getpid()  # (in a worker process)
    published = job.progress
    assert published["progress"][1] == ["halfway"]
    assert published["props"]["side"]["children"][1] == "set from the job"
    assert log.read_text().split() == ["started", "cleanup"]


def test_a_cancel_reaches_an_async_callback_at_its_await_and_its_finally_runs(app: Flask, tmp_path: Path) -> None:
    log = tmp_path / "log"
    job = submit({"log": str(log), "sleep": 30})
    wait_for(lambda: log.exists() and "started" in log.read_text(), TIMEOUT, "the callback to start")
    views = app.extensions["longtask"].backend.pool_workers()
    assert any(job.id in view.coroutines for view in views)  # on a worker of coroutine jobs, on its loop
    asked = time.monotonic()
    job.cancel()
    assert job.wait(TIMEOUT) is JobStatus.CANCELLED
    wait_for(lambda: log.read_text().split() == ["started", "cleanup"], TIMEOUT, "its finally")
    assert time.monotonic() - asked < 2.0  # at its await, well within the 5 s grace: not stopped by force


# -- the example, in Chromium: Dash's own dispatch of an async callback (dash[async]) -------------------

#: Where scripts/test installs ``asgiref`` (what ``dash[async]`` adds) for the example's server
#: alone: with it importable, every Dash app serves its callbacks as async views, and the other
#: Dash tests run in this process without it, as most apps do. (Without it the tests below skip,
#: which tests/conftest.py turns into a failure under CI=true.)
DASH_ASYNC = Path(sys.prefix) / "dash-async"
ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = "dash_async_cleanup"


@pytest.mark.parametrize("backend", ["thread", "diskcache"])
def test_the_async_example_cleans_up_at_once_when_cancelled_in_chromium(
    chrome: t.Any, tmp_path: Path, backend: str
) -> None:
    from .test_dash_examples import click, enabled, text, until

    if not (DASH_ASYNC / "asgiref").is_dir():
        pytest.skip(f"asgiref is not installed in {DASH_ASYNC}: bash scripts/test installs it")
    scratch = tmp_path / "scratch"
    port = free_port()
    env = {
        "EXAMPLE_TIME_SCALE": "20",  # steps of 10 s: a cleanup before the step's end is the cancel's
        "EXAMPLE_SCRATCH_DIR": str(scratch),
        "FLASK_LONGTASK_BACKEND": backend,
        "FLASK_LONGTASK_DISKCACHE_DIR": str(tmp_path / "longtask"),
        "PYTHONPATH": f"{ROOT}{os.pathsep}{DASH_ASYNC}",
    }
    cmd = [sys.executable, str(ROOT / "examples" / f"{EXAMPLE}.py"), "--port", str(port)]
    with live_server_process(cmd, port, env=env, cwd=tmp_path) as url:
        chrome.get(url)

        def left(driver: t.Any, count: int) -> bool:
            driver.find_element("id", "count").click()
            return text(driver, "left") == f"{count} scratch files"

        click(chrome, "run")
        until(chrome, lambda d: text(d, "status") == "Step 1 of 10", "the run's first step")
        until(chrome, lambda d: left(d, 1), "its scratch file while it runs")
        click(chrome, "cancel")
        cancelled = time.monotonic()
        until(chrome, lambda d: enabled(d, "run") and not enabled(d, "cancel"), "the run to stop")
        until(chrome, lambda d: left(d, 0), "its scratch file removed by its finally")
        # CancelledError at its await: its finally ran well before the 10 s step could end (a
        # callback left to run, or cancelled only at its next progress report, would keep the
        # file until then).
        assert time.monotonic() - cancelled < 5.0
        assert not (scratch.exists() and list(scratch.iterdir()))
        assert text(chrome, "result") == ""  # a cancelled run returns nothing


def test_dashs_own_async_background_callback_tests_pass_on_longtaskmanager() -> None:
    """plotly/dash's ``tests/async_tests`` (its two async background-callback tests, in
    Chromium) on LongTaskManager: in a pytest of their own, where dash[async]'s asgiref is
    importable (tests/async_tests/README.md)."""
    if not (DASH_ASYNC / "asgiref").is_dir():
        pytest.skip(f"asgiref is not installed in {DASH_ASYNC}: bash scripts/test installs it")
    env = {key: value for key, value in os.environ.items() if not key.startswith("PYTEST_")}  # (not xdist's)
    env.update(DASH_ASYNC_TESTS="1", PYTHONPATH=f"{ROOT}{os.pathsep}{DASH_ASYNC}")
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "--log-level=WARNING", "tests/async_tests"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=110,
    )
    summary = done.stdout.strip().splitlines()[-1] if done.stdout.strip() else ""
    assert done.returncode == 0, done.stdout[:8000] + done.stderr[-2000:]  # (the failures first)
    assert re.fullmatch(r"=* ?2 passed.*", summary), summary  # both ran: none skipped, none left out
