"""A forced cancel outlives the process that asked for it.

``job.cancel()`` of a running job that ignores its cancel flag must stop it even when the
process that cancelled exits at once: ``flask longtask cancel`` (the real CLI) and a one-off
script, each a process of its own. The side that runs the job owns the deadline: the pool's
host on DiskcacheBackend (``docs/internals.md``), a watchdog in the Celery worker's main process
on CeleryBackend (``docs/celery.md``). Each test waits, with a deadline of the cancelling app's
``LONGTASK_CANCEL_GRACE`` + 1 s from the moment the cancelling process exited, for the job to
read ``cancelled`` and for the process that ran it to be gone.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import typing as t
from pathlib import Path

import pytest
from flask import Flask

from flask_longtask import JobStatus
from flask_longtask.backends.diskcache import DiskcacheBackend
from tests import diskcache_jobs as jobs
from tests.helpers import wait_for
from tests.services import ROOT

celery = pytest.importorskip("celery")
from tests import test_celery  # noqa: E402 - after the skip

# The real redis-server and Celery worker of tests/test_celery.py (one of each for this module).
redis_url = test_celery.redis_url
celery_worker = test_celery.celery_worker

FLASK = Path(sys.executable).parent / "flask"

#: The LONGTASK_CANCEL_GRACE of the cancelling processes' apps: tests/apps/diskcache_app.py
#: sets 0.2; tests/celery_app.py keeps the default, 0.5.
DISKCACHE_GRACE = 0.2
CELERY_GRACE = 0.5

#: A one-off script of the app: it cancels the job and exits at once (it waits for nothing).
DISKCACHE_SCRIPT = textwrap.dedent(
    """
    import sys
    from tests import diskcache_jobs as jobs
    from tests.apps.diskcache_app import app

    with app.app_context():
        jobs.longtask.get_job(sys.argv[1]).cancel()
    """
)
CELERY_SCRIPT = textwrap.dedent(
    """
    import sys
    from tests.celery_app import app, longtask

    with app.app_context():
        longtask.get_job(sys.argv[1]).cancel()
    """
)


def alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie nobody has reaped yet counts as gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def run(argv: list[str], env: dict[str, str]) -> str:
    """Run a cancelling process to its end; its output."""
    done = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def cancel_with_cli(app_path: str, job_id: str, env: dict[str, str]) -> None:
    out = run([str(FLASK), "--app", app_path, "longtask", "cancel", job_id], env)
    assert out == f"Cancellation requested for job {job_id} (running).\n"


def assert_stopped_by_force(job: t.Any, pid: int, grace: float) -> None:
    """The job ends cancelled and its process is gone, within ``grace`` + 1 s from now (the
    moment the cancelling process exited)."""
    wait_for(
        lambda: job.status is JobStatus.CANCELLED and not alive(pid),
        grace + 1.0,
        "the job to end cancelled and its process to be gone",
    )


def started(pid_file: Path) -> int:
    return int(wait_for(lambda: pid_file.exists() and pid_file.read_text(), 60, "the job to start"))


# -- DiskcacheBackend: the pool's host owns the deadline -----------------------------------------


@pytest.fixture
def pool_dir(tmp_path: Path) -> Path:
    return tmp_path / "lt"


@pytest.fixture
def pool_app(pool_dir: Path) -> t.Iterator[Flask]:
    """This process hosts the pool (as a web process does by default); cancels come from others."""
    backend = DiskcacheBackend(pool_dir, workers=1)
    app = Flask("tests.test_forced_cancel")
    app.config.update(TESTING=True, LONGTASK_PROGRESS_INTERVAL=0.01)
    jobs.longtask.init_app(app, backend=backend)
    try:
        with app.app_context():
            yield app
    finally:
        backend.close()


def diskcache_env(pool_dir: Path) -> dict[str, str]:
    env = dict(os.environ, LONGTASK_DISKCACHE_DIR=str(pool_dir), PYTHONPATH=str(ROOT))
    env.pop("WERKZEUG_RUN_MAIN", None)
    return env


def test_diskcache_cli_cancel_stops_a_job_that_ignores_its_flag(
    pool_app: Flask, pool_dir: Path, tmp_path: Path
) -> None:
    pid_file = tmp_path / "pid"
    job = jobs.stubborn.submit(str(pid_file))
    pid = started(pid_file)
    cancel_with_cli("tests.apps.diskcache_app", job.id, diskcache_env(pool_dir))
    assert_stopped_by_force(job, pid, DISKCACHE_GRACE)
    assert jobs.add.submit(1, 2).result(timeout=30) == 3  # the pool goes on


def test_diskcache_script_that_cancels_and_exits_stops_the_job(pool_app: Flask, pool_dir: Path, tmp_path: Path) -> None:
    pid_file = tmp_path / "pid"
    job = jobs.stubborn.submit(str(pid_file))
    pid = started(pid_file)
    run([sys.executable, "-c", DISKCACHE_SCRIPT, job.id], diskcache_env(pool_dir))
    assert_stopped_by_force(job, pid, DISKCACHE_GRACE)


# -- CeleryBackend: a watchdog in the worker's main process owns the deadline ---------------------


@pytest.fixture
def celery_client(redis_url: str, celery_worker: t.Any) -> t.Iterator[Flask]:
    """A web process of the app of tests/celery_app.py, the module the worker imported."""
    from tests import celery_app as worker_module

    app = Flask("tests.forced_cancel_client")
    backend = test_celery._clean_backend(redis_url)
    worker_module.longtask.init_app(app, backend=backend)
    try:
        with app.app_context():
            yield app
    finally:
        backend.close()


def celery_env(redis_url: str) -> dict[str, str]:
    return dict(os.environ, LONGTASK_TEST_REDIS_URL=redis_url, PYTHONPATH=str(ROOT))


@pytest.mark.xdist_group("celery")
def test_celery_cli_cancel_stops_a_job_that_ignores_its_flag(
    celery_client: Flask, redis_url: str, tmp_path: Path
) -> None:
    from tests.celery_app import roundtrip, stubborn

    pid_file = tmp_path / "pid"
    job = stubborn.submit(str(pid_file))
    pid = started(pid_file)
    cancel_with_cli("tests.celery_app:app", job.id, celery_env(redis_url))
    assert_stopped_by_force(job, pid, CELERY_GRACE)
    assert roundtrip.submit("still works").result(timeout=30) == "still works"


@pytest.mark.xdist_group("celery")
def test_celery_script_that_cancels_and_exits_stops_the_job(
    celery_client: Flask, redis_url: str, tmp_path: Path
) -> None:
    from tests.celery_app import stubborn

    pid_file = tmp_path / "pid"
    job = stubborn.submit(str(pid_file))
    pid = started(pid_file)
    run([sys.executable, "-c", CELERY_SCRIPT, job.id], celery_env(redis_url))
    assert_stopped_by_force(job, pid, CELERY_GRACE)
