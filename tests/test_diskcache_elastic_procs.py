"""A grown elastic pool under what the fixed pools of the other tests go through: its host's death
(a standby takes over; the grown workers exit with it) and a forced cancel of a job one of its
extra workers runs. Real processes: the host is ``flask longtask worker`` in the first.
"""

from __future__ import annotations

import logging
import typing as t
from pathlib import Path

import pytest
from flask import Flask

from flask_longtask import JobStatus
from flask_longtask.backends.diskcache import DiskcacheBackend
from tests import diskcache_jobs as jobs
from tests import test_diskcache_elastic
from tests.helpers import alive, wait_for
from tests.test_diskcache import GRACE, workers_of
from tests.test_diskcache_elastic import grows, wait_for_growth
from tests.test_diskcache_procs import cli_host, stop

#: Makes elastic pools, closes them, and checks no worker outlives them.
pools = test_diskcache_elastic.pools


def pids_in(files: t.Sequence[Path]) -> set[int]:
    """The pids the jobs wrote so far (each to its file)."""
    return {int(text) for text in (f.read_text() for f in files if f.exists()) if text}


@grows
def test_the_host_of_a_grown_pool_dies_a_standby_takes_over(tmp_path: Path) -> None:
    directory = tmp_path / "lt"
    log = tmp_path / "worker.log"
    out = log.open("wb")
    host = cli_host(directory, out, "--max-workers", "3", LONGTASK_WORKERS="1")  # one kept warm, up to three
    submitter = DiskcacheBackend(directory, embedded=False)  # a web process that never hosts
    app = Flask("tests.submitter")
    jobs.longtask.init_app(app, backend=submitter)
    try:
        with app.app_context():
            pid_files = [tmp_path / f"pid{n}" for n in range(3)]
            running = [jobs.stubborn.submit(str(f)) for f in pid_files]
            queued = [jobs.add.submit(n, 100) for n in range(3)]
            # Three jobs that wait, each on its own worker: the pool grew to its ceiling.
            wait_for_growth(lambda: len(pids_in(pid_files)) == 3, "the pool to grow to three workers")
            workers = pids_in(pid_files)
            assert [job.status for job in queued] == [JobStatus.QUEUED] * 3  # (at the ceiling)

            host.kill()  # kill -9 the process hosting the pool
            host.wait(10)
            wait_for(lambda: not [pid for pid in workers if alive(pid)], 5, "every worker to exit with its host")

            # "The app starts again": a process that may host the pool (elastic, by default).
            restarted = DiskcacheBackend(directory)
            app2 = Flask("tests.restarted")
            jobs.longtask.init_app(app2, backend=restarted)
            try:
                with app2.app_context():
                    for job in running:
                        job = jobs.longtask.get_job(job.id)
                        assert job.wait(timeout=10) is JobStatus.FAILED
                        error = t.cast(dict, job.error)
                        assert error["type"] == "WorkerLostError"
                        assert "hosting the worker pool died" in error["message"]
                    assert [jobs.longtask.get_job(j.id).result(timeout=30) for j in queued] == [100, 101, 102]
            finally:
                restarted.close()
    finally:
        stop(host)
        submitter.close()
        out.close()
        assert "Traceback" not in log.read_text(), log.read_text()


@grows
def test_a_forced_cancel_of_a_job_on_an_extra_worker(
    pools: t.Any, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The job ends cancelled and its worker is stopped, within the grace and a second; the pool
    does not replace a worker above its minimum, and the other jobs run on."""
    caplog.set_level(logging.WARNING)
    backend, app = pools(workers=1, max_workers=3)
    pid_files = [tmp_path / f"pid{n}" for n in range(3)]
    with app.app_context():
        first, *others = jobs_ = [jobs.stubborn.submit(str(f)) for f in pid_files]
        wait_for_growth(lambda: len(pids_in(pid_files)) == 3, "the pool to grow to three workers")
        warm = next(view.pid for view in workers_of(backend) if view.job_id == first.id)
        extra = next(view for view in workers_of(backend) if view.job_id == others[0].id)
        assert extra.pid != warm
        others[0].cancel()
        wait_for(
            lambda: others[0].status is JobStatus.CANCELLED and not alive(extra.pid),
            GRACE + 1.0,
            "the job to end cancelled and its worker to be stopped",
        )
        assert len(workers_of(backend)) == 2  # (above the minimum: not replaced)
        assert [job.status for job in (first, others[1])] == [JobStatus.RUNNING] * 2
        for job in (first, others[1]):
            job.cancel()
        wait_for(lambda: all(job.status is JobStatus.CANCELLED for job in jobs_), GRACE + 1.0, "the others to stop")
        assert jobs.add.submit(1, 2).result(timeout=30) == 3  # (the minimum replaced: the pool goes on)
    assert not [r for r in caplog.records if "died while idle" in r.getMessage()]
