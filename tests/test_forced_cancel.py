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
import time
import typing as t
from pathlib import Path

import pytest
from flask import Flask

from flask_longtask import JobStatus
from flask_longtask.backends.diskcache import DiskcacheBackend
from tests import diskcache_jobs as jobs
from tests.helpers import alive, wait_for
from tests.services import ROOT

celery = pytest.importorskip("celery")
from flask_longtask.backends import _celery_watchdog as watchdog  # noqa: E402 - after the skip
from flask_longtask.backends.celery import RUN_TASK  # noqa: E402
from flask_longtask.store import keys  # noqa: E402
from tests import test_celery  # noqa: E402

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
    backend = DiskcacheBackend(pool_dir, workers=1, max_workers=1)
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
    # Its deadline does not stay behind: a watchdog's sweep drops the entries of ended jobs.
    backend = celery_client.extensions["longtask"].backend
    wait_for(
        lambda: backend.redis.zscore(watchdog.deadlines_key(backend.prefix), job.id) is None,
        watchdog.SWEEP + 10,
        "the job's deadline to be dropped",
    )


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


@pytest.mark.xdist_group("celery")
def test_the_watchdog_keeps_only_deadlines_of_jobs_that_run(redis_url: str) -> None:
    """What the watchdog reads back from Redis is validated, and the set of deadlines stays
    bounded: a sweep drops malformed entries and those of jobs that are over (or gone), and each
    new deadline drops entries older than KEEP or absurdly far ahead."""
    backend = test_celery._clean_backend(redis_url)
    try:
        key = watchdog.deadlines_key(backend.prefix)
        now = time.time()
        running, ended, gone, garbled, ahead, stale, retried = (f"{n:032x}" for n in (1, 2, 3, 4, 5, 6, 8))
        for job_id in (running, ahead, stale, retried):
            backend.set(keys.job(job_id), {"id": job_id, "status": "running"})
            if job_id != retried:  # (a retry after a time limit takes the flag down)
                backend.set(keys.cancel(job_id), time.time())
        backend.set(keys.job(ended), {"id": ended, "status": "succeeded"})
        backend.redis.set(backend.prefix + keys.job(garbled), b"\x80not json")
        backend.redis.zadd(
            key,
            {
                running: now - 1,  # runs on no worker here: its own worker's watchdog stops it
                retried: now - 1,  # its next attempt runs: the stop was for the one before
                ended: now - 1,
                gone: now - 1,
                garbled: now - 1,
                "not a job id": now - 1,
                "A" * 32: now - 1,  # (job ids are lowercase)
                "\u00e9".encode() * 16: now - 1,
                ahead: float("inf"),  # not due: a sweep does not see it
                stale: now - watchdog.KEEP - 60,  # on a worker that cannot stop it, for a day
            },
        )
        # A watchdog that runs no job of these (it is not in a worker): only its sweep acts.
        watchdog.Watchdog(backend, "nobody@nowhere", RUN_TASK).check()
        left = {m.decode() for m in backend.redis.zrange(key, 0, -1)}
        assert left == {running, ahead, stale}

        new = f"{7:032x}"
        backend.terminate(new, 0.5)
        assert {m.decode() for m in backend.redis.zrange(key, 0, -1)} == {running, new}
        assert 0 < backend.redis.ttl(key) <= watchdog.KEEP + 1

        with pytest.raises(ValueError, match="Not a job id"):
            backend.terminate("../" + "0" * 29, 0.5)
        for grace in (-1.0, float("nan"), float("inf"), "1", True):
            with pytest.raises(ValueError, match="finite number of seconds"):
                backend.terminate(new, grace)  # type: ignore[arg-type]
    finally:
        backend.close()


def test_what_the_watchdog_reads_is_validated() -> None:
    assert watchdog.job_id_of(b"0123456789abcdef0123456789abcdef") == "0123456789abcdef0123456789abcdef"
    for bad in (b"0123456789ABCDEF0123456789ABCDEF", b"\xff" * 32, "0" * 31, "0" * 33, None, 42):
        assert watchdog.job_id_of(bad) is None
    assert watchdog.deadline_of(b"1.5") == 1.5 and watchdog.deadline_of(2) == 2.0
    for bad in (float("inf"), float("-inf"), float("nan"), b"inf", b"x", None, True, [1.0]):
        assert watchdog.deadline_of(bad) is None
