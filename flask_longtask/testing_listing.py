"""The conformance suite's listing part: :meth:`LongTask.jobs <flask_longtask.LongTask.jobs>`,
:meth:`LongTask.counts <flask_longtask.LongTask.counts>` and ``flask longtask jobs`` over a
backend's listing index (:meth:`Backend.list_jobs <flask_longtask.backends.Backend.list_jobs>`).

:class:`~flask_longtask.testing.BackendConformance` inherits these tests; run them by subclassing
it, not this class (its ``app`` and ``backend`` fixtures are there).
"""

from __future__ import annotations

import time
import typing as t
from pathlib import Path

import pytest
from flask import Flask

from .backends.base import Backend, JobRequest
from .job import JobStatus
from .newjobs import new_job_id

if t.TYPE_CHECKING:  # pragma: no cover
    from .job import Job

TIMEOUT = 30.0


def _submit_as(app: Flask, backend: Backend, owner: str, value: t.Any) -> Job[t.Any]:
    """Submit ``echo(value)`` as ``owner`` (as the HTTP API does), through the backend's
    ``store_and_enqueue``."""
    from .testing import echo

    store = app.extensions["longtask"].store
    job_id = new_job_id()
    args = backend.dumps(((value,), {}))
    arguments = {"task": echo.name, "module": echo._module, "app": app.import_name, "args": args}
    request = JobRequest(job_id, echo.name, echo, app)
    backend.store_and_enqueue(store.new_job(request, arguments, None, owner, announce=lambda: None))
    return store.job(job_id)  # type: ignore[no-any-return]


class ListingConformance:
    """Listing and counting jobs, on the backend's index."""

    def _fill(self, backend: Backend) -> int:
        """How many jobs the backend runs at once (BackendConformance knows)."""
        return t.cast(t.Any, self)._concurrency(backend)  # type: ignore[no-any-return]

    def test_listing_pages_newest_first(self, app: Flask) -> None:
        from ._conformance import longtask
        from .testing import echo

        jobs = [echo.submit(i) for i in range(7)]
        for job in jobs:
            job.wait(TIMEOUT)
        newest_first = [job.id for job in reversed(jobs)]
        pages, before = [], None
        while True:
            page = longtask.jobs(limit=3, before=before)
            if not page:
                break
            pages.append([job.id for job in page])
            before = page[-1].id
        assert pages == [newest_first[:3], newest_first[3:6], newest_first[6:]]
        assert [job.id for job in longtask.jobs(since=time.time() + 3600)] == []
        # (created_at is to the microsecond, rounded: one less is at or before the job's created)
        since = [job.id for job in longtask.jobs(since=jobs[3].created_at.timestamp() - 1e-6)]
        assert since == newest_first[:4]
        with pytest.raises(ValueError, match="status must be one of"):
            longtask.jobs(status="lost")
        with pytest.raises(ValueError, match="limit"):
            longtask.jobs(limit=0)

    def test_listing_filters_by_status_task_and_owner(self, app: Flask, backend: Backend, tmp_path: Path) -> None:
        from ._conformance import _until, longtask
        from .testing import block, echo, fail

        gate = tmp_path / "gate"
        done = [echo.submit(1), echo.submit(2)]
        failed = fail.submit("listed")
        alice = _submit_as(app, backend, "alice", 3)
        for job in (*done, failed, alice):
            job.wait(TIMEOUT)
        # Every worker busy, and one job more: queued.
        running = [block.submit(str(gate)) for _ in range(self._fill(backend))]
        _until(lambda: all(job.status is JobStatus.RUNNING for job in running), "the blocking jobs to run")
        queued = block.submit(str(gate))
        try:

            def ids(**query: t.Any) -> list[str]:
                return [job.id for job in longtask.jobs(**query)]

            assert ids(status="queued") == [queued.id]
            assert ids(status="running") == [job.id for job in reversed(running)]
            assert ids(status=JobStatus.FAILED) == [failed.id]
            assert ids(status="succeeded") == [alice.id, done[1].id, done[0].id]
            assert ids(task=fail) == [failed.id]
            assert ids(task=echo.name, status="failed") == []
            assert ids(owner="alice") == [alice.id] and ids(owner="bob") == []
            assert ids(task=block.name, status="running", limit=1) == [running[-1].id]
            counts = longtask.counts()
            assert {status.value: counts[status.value] for status in JobStatus} == {
                "queued": 1,
                "running": len(running),
                "succeeded": 3,
                "failed": 1,
                "cancelled": 0,
            }
            queued.cancel()
            assert queued.wait(TIMEOUT) is JobStatus.CANCELLED
            assert ids(status="cancelled") == [queued.id] and ids(status="queued") == []
        finally:
            gate.touch()
        for job in running:
            job.wait(TIMEOUT)
        assert ids(status="running") == [] and longtask.counts()["succeeded"] == 3 + len(running)

    def test_listing_after_purge_and_retries(self, app: Flask, tmp_path: Path) -> None:
        from ._conformance import longtask
        from .testing import echo, flaky

        retried = flaky.submit(str(tmp_path / "log"))
        assert retried.result(timeout=TIMEOUT) == 2
        # A retry does not end the job: it is listed once, with its last attempt.
        assert [(job.id, job.attempt) for job in longtask.jobs(task=flaky)] == [(retried.id, 2)]
        kept = echo.submit("kept")
        assert kept.wait(TIMEOUT) is JobStatus.SUCCEEDED
        runner = app.test_cli_runner()
        listing = runner.invoke(args=["longtask", "jobs", "--task", flaky.name]).output
        assert retried.id in listing and kept.id not in listing
        assert runner.invoke(args=["longtask", "jobs", "--limit", "1"]).output.count("\n") == 3
        assert runner.invoke(args=["longtask", "purge"]).exit_code == 0
        assert longtask.jobs() == [] and longtask.counts()["succeeded"] == 0

    def test_listing_forgets_jobs_whose_records_expired(self, app: Flask) -> None:
        from ._conformance import _until, longtask
        from .testing import echo

        app.extensions["longtask"].store.result_expire = 0.5  # (kept by the job's record)
        job = echo.submit("brief")
        assert job.wait(TIMEOUT) is JobStatus.SUCCEEDED
        assert longtask.jobs() == [job] and longtask.counts()["succeeded"] == 1
        _until(lambda: longtask.jobs() == [], "the expired job to leave the listing")
        assert longtask.counts()["succeeded"] == 0

    def test_tallies_count_every_end(self, app: Flask, backend: Backend, tmp_path: Path) -> None:
        from ._conformance import _until
        from .testing import block, echo, fail, flaky

        if type(backend).job_tallies is Backend.job_tallies:
            assert backend.job_tallies() is None  # (keeping none is allowed: no metrics' counters)
            return

        def totals() -> dict[tuple[str, str], tuple[int, int, int]]:
            out: dict[tuple[str, str], tuple[int, int, int]] = {}
            for tally in backend.job_tallies() or []:
                jobs, timed, retries = out.get((tally.task, tally.status), (0, 0, 0))
                timed += tally.jobs if tally.bound is not None else 0
                out[(tally.task, tally.status)] = (jobs + tally.jobs, timed, retries + tally.retries)
            return out

        before = totals()
        assert echo.submit(1).wait(TIMEOUT) is JobStatus.SUCCEEDED
        assert fail.submit("tallied").wait(TIMEOUT) is JobStatus.FAILED
        assert flaky.submit(str(tmp_path / "log")).wait(TIMEOUT) is JobStatus.SUCCEEDED  # (after a retry)
        blocked = block.submit(str(tmp_path / "gate"))
        _until(lambda: blocked.status is JobStatus.RUNNING, "the job to run")
        blocked.cancel()
        assert blocked.wait(TIMEOUT) is JobStatus.CANCELLED
        # Current as soon as each job has ended, and a job is counted once, at its end.
        added = {
            key: tuple(n - m for n, m in zip(value, before.get(key, (0, 0, 0)), strict=True))
            for key, value in totals().items()
        }
        assert {key: value for key, value in added.items() if any(value)} == {
            (echo.name, "succeeded"): (1, 1, 0),
            (fail.name, "failed"): (1, 1, 0),
            (flaky.name, "succeeded"): (1, 1, 1),
            (block.name, "cancelled"): (1, 1, 0),
        }
        blocked_seconds = sum(t.seconds for t in backend.job_tallies() or [] if t.task == block.name)
        assert blocked_seconds > 0
