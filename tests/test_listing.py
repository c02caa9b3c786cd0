"""Listing jobs: the arguments, job ids, and what the diskcache index does beyond the conformance
suite (``flask_longtask/testing_listing.py``, run on every backend)."""

from __future__ import annotations

import sqlite3
from datetime import datetime, timezone
from pathlib import Path

import pytest
from flask import Flask

from flask_longtask import JobStatus, LongTask
from flask_longtask.backends import ThreadBackend
from flask_longtask.backends.base import JobQuery, JobRequest
from flask_longtask.backends.diskcache import DiskcacheBackend
from flask_longtask.extension import new_job_id
from flask_longtask.listing import MAX_LIMIT, query
from tests import diskcache_jobs as jobs


def test_query_arguments_are_checked() -> None:
    assert query() == (JobQuery(limit=100), None)
    # Running jobs are "queued" in the index: the records tell them apart.
    assert query(status="running", task="t", owner="o", before="b", limit=5) == (
        JobQuery("queued", "t", "o", None, "b", 5),
        JobStatus.RUNNING,
    )
    assert query(since=datetime(2026, 1, 1, tzinfo=timezone.utc))[0].since == 1767225600.0
    assert query(since=12)[0].since == 12.0
    for bad, error in [
        ({"status": "lost"}, ValueError),
        ({"limit": 0}, ValueError),
        ({"limit": MAX_LIMIT + 1}, ValueError),
        ({"limit": True}, TypeError),
        ({"limit": 1.5}, TypeError),
        ({"since": float("nan")}, ValueError),
        ({"since": "yesterday"}, TypeError),
        ({"task": 3}, TypeError),
        ({"owner": "x" * 1001}, ValueError),
    ]:
        with pytest.raises(error):
            query(**bad)


def test_job_ids_made_in_a_process_only_grow() -> None:
    ids = [new_job_id() for _ in range(2000)]  # many in the same millisecond
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    assert all(len(job_id) == 32 and int(job_id, 16) >= 0 for job_id in ids)
    # The random part of the next id in the same millisecond is not the one before's plus one.
    same_ms = [(a, b) for a, b in zip(ids, ids[1:], strict=False) if a[:12] == b[:12]]
    assert same_ms and all(int(b[12:], 16) - int(a[12:], 16) > 1 for a, b in same_ms[:100])


def test_a_job_that_cannot_be_queued_is_not_listed() -> None:
    class Refuses(ThreadBackend):
        def enqueue(self, request: JobRequest) -> None:
            raise ConnectionError("the queue is away")

    app = Flask(__name__)
    longtask = LongTask(app, backend=Refuses(1))
    task = longtask.task(lambda: None, name="refused")
    with app.app_context():
        with pytest.raises(ConnectionError):
            task.submit()
        assert longtask.jobs() == [] and longtask.counts()["queued"] == 0


def test_the_diskcache_index_is_made_for_a_directory_of_an_earlier_build(tmp_path: Path) -> None:
    directory = tmp_path / "lt"
    backend = DiskcacheBackend(directory, workers=1, max_workers=1)
    app = Flask("tests.test_listing")
    jobs.longtask.init_app(app, backend=backend)
    try:
        with app.app_context():
            done = jobs.add.submit(1, 2)
            assert done.result(timeout=30) == 3
            (tmp_path / "go").touch()
            failed = jobs.wait_for_file.submit(str(tmp_path / "go"), fail="listed")
            assert failed.wait(30) is JobStatus.FAILED
            listed = [job.id for job in jobs.longtask.jobs()]
            assert listed == [failed.id, done.id]
    finally:
        backend.close()
    # An earlier build had no index table.
    with sqlite3.connect(directory / "cache.db") as con:
        con.execute("DROP TABLE longtask_jobs")
    backend = DiskcacheBackend(directory, workers=1, max_workers=1, embedded=False)
    again = Flask("tests.test_listing")
    jobs.longtask.init_app(again, backend=backend)
    try:
        with again.app_context():
            assert [job.id for job in jobs.longtask.jobs()] == listed
            assert jobs.longtask.jobs(status="failed") == [failed]
            assert jobs.longtask.jobs(task=jobs.add) == [done]
            counts = jobs.longtask.counts()
            assert (counts["succeeded"], counts["failed"], counts["queued"]) == (1, 1, 0)
    finally:
        backend.close()
