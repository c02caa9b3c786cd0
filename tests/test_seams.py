"""The typed seams between the core and a backend: the key schema, NewJob, JobEnd, wait, Handoff.

Backends here are real ThreadBackends; the recording one only notes what it is handed.
"""

from __future__ import annotations

import math
import threading
import time
import typing as t

import pytest
from flask import Flask

from flask_longtask import Job, JobStatus, JobTimeoutError, LongTask, current_job, signals
from flask_longtask.backends import MISSING, Handoff, JobEnd, NewJob, ThreadBackend, execute, mark_lost
from flask_longtask.config import DEFAULT_CONFIG
from flask_longtask.store import JobStore, keys
from flask_longtask.worker import owner_of, owner_pid


class Recording(ThreadBackend):
    """A ThreadBackend that notes the looks, ends and new jobs the core hands it."""

    def __init__(self) -> None:
        super().__init__(workers=2)
        self.looks: list[tuple[float, float]] = []
        self.ends: list[JobEnd] = []
        self.new: list[NewJob] = []

    def wait(self, job_id: str, keys: t.Sequence[str], *, timeout: float, elapsed: float) -> list[t.Any]:
        self.looks.append((timeout, elapsed))
        return super().wait(job_id, keys, timeout=timeout, elapsed=elapsed)

    def end_job(self, end: JobEnd) -> bool | None:
        self.ends.append(end)
        return super().end_job(end)

    def store_and_enqueue(self, job: NewJob) -> None:
        self.new.append(job)
        super().store_and_enqueue(job)


@pytest.fixture
def backend() -> t.Iterator[Recording]:
    backend = Recording()
    yield backend
    backend.close()


@pytest.fixture
def release() -> t.Iterator[threading.Event]:
    event = threading.Event()
    yield event
    event.set()  # never leave a job blocking the pool's shutdown


# -- the key schema -----------------------------------------------------------------------------


def test_keys_of_a_job() -> None:
    assert keys.job_id(keys.job("abc")) == "abc"
    assert keys.job("abc").startswith(keys.JOB_PREFIX)
    assert keys.to_run("abc") == [keys.job("abc"), keys.request("abc"), keys.cancel("abc")]
    per_job = keys.of_job("abc")
    for name in (keys.job, keys.request, keys.progress, keys.result, keys.cancel, keys.claim, keys.end, keys.alive):
        assert name("abc") in per_job
    assert len(set(per_job)) == len(per_job) == 8
    with pytest.raises(ValueError, match="not a job record's key"):
        keys.job_id(keys.claim("abc"))


def test_purge_leaves_no_key_of_a_finished_job(app: Flask, longtask: LongTask, backend: Recording) -> None:
    @longtask.task(cache_by=[])
    def one() -> int:
        current_job.set_progress(1)
        return 1

    with app.app_context():
        job = one.submit()
        assert job.result(timeout=10) == 1
        assert app.test_cli_runner().invoke(args=["longtask", "purge"]).output == "Purged 1 finished job(s).\n"
        left = list(backend.scan(""))
    assert [k for k in left if job.id in k] == []
    assert all(k.startswith(keys.memo_gen("")) for k in left), left  # the memo generation stays


# -- configuration ------------------------------------------------------------------------------


def test_a_store_without_an_app_has_the_documented_defaults(backend: Recording) -> None:
    store = JobStore(backend)
    assert store.result_expire == DEFAULT_CONFIG["LONGTASK_RESULT_EXPIRE"]
    assert store.cancel_grace == DEFAULT_CONFIG["LONGTASK_CANCEL_GRACE"]
    assert store.heartbeat_timeout == DEFAULT_CONFIG["LONGTASK_HEARTBEAT_TIMEOUT"]
    assert store.progress_interval == DEFAULT_CONFIG["LONGTASK_PROGRESS_INTERVAL"]
    assert JobStore(backend, heartbeat_timeout=2).heartbeat_timeout == 2.0


# -- claims -------------------------------------------------------------------------------------


def test_owner_pid_reads_well_formed_claims_only() -> None:
    assert owner_pid({"by": owner_of(4242, 7), "at": 1.0}) == 4242
    assert owner_pid({"by": "host:with:colons:99:7", "at": 1.0}) == 99
    for claim in (
        {"by": "cancel", "at": 1.0},
        {"by": "h:0:1"},
        {"by": "h:-5:1"},
        {"by": "h: 5:1"},
        {"by": "h:\u0661\u0662:1"},  # Arabic-Indic digits: int() would take them
        {"by": "h:5"},
        {"by": 5},
        {"at": 1.0},
        "h:5:1",
        None,
        MISSING,
    ):
        assert owner_pid(claim) is None, claim


# -- NewJob and JobEnd ----------------------------------------------------------------------------


def test_a_submit_hands_the_backend_a_new_job(app: Flask, longtask: LongTask, backend: Recording) -> None:
    @longtask.task
    def double(n: int) -> int:
        return n * 2

    with app.app_context():
        job = double.submit(21)
        assert job.result(timeout=10) == 42
    (new,) = backend.new
    assert new.id == job.id and new.request.task is double and new.request.app is app
    assert new.record["status"] == "queued" and new.arguments["task"] == double.name
    assert new.writes == (
        ("set", keys.request(job.id), new.arguments, None),
        ("set", keys.job(job.id), new.record, None),
    )


def _one_job(app: Flask, longtask: LongTask) -> Job[int]:
    """A job returning 1, ended."""

    @longtask.task
    def one() -> int:
        return 1

    with app.app_context():
        job = one.submit()
        assert job.result(timeout=10) == 1
    return job


def test_a_job_end_says_what_it_writes(app: Flask, longtask: LongTask, backend: Recording) -> None:
    job = _one_job(app, longtask)
    (end,) = backend.ends
    assert (end.job_id, end.status, end.key, end.unless) == (job.id, "succeeded", keys.end(job.id), keys.cancel(job.id))
    assert backend.get(end.key) == end.at
    written = end.values(True)
    assert written[keys.job(job.id)]["status"] == "succeeded" and backend.loads(written[keys.result(job.id)]) == 1
    assert end.values(False)[keys.job(job.id)]["status"] == "cancelled" and keys.result(job.id) not in end.values(False)
    assert end.cancelled(True) is False and end.cancelled(False) is True


def test_the_end_of_a_job_cancelled_while_queued(app: Flask, backend: Recording) -> None:
    store = app.extensions["longtask"].store
    store.create("q" * 32, {"task": "t", "module": None, "app": app.import_name, "args": b""}, None)
    with app.app_context():
        store.cancel("q" * 32)
    (end,) = backend.ends
    assert end.status == "cancelled" and end.unless is None and end.otherwise == ()
    assert end.cancelled(True) is True


# -- waiting --------------------------------------------------------------------------------------


def test_a_finished_job_is_answered_at_the_first_look(app: Flask, longtask: LongTask, backend: Recording) -> None:
    job = _one_job(app, longtask)
    backend.looks.clear()
    with app.app_context():
        assert job.result() == 1
    assert backend.looks == [(math.inf, 0.0)]


def test_a_wait_with_a_timeout_looks_until_its_deadline(
    app: Flask, longtask: LongTask, backend: Recording, release: threading.Event
) -> None:
    @longtask.task
    def blocked() -> None:
        release.wait(10)

    with app.app_context():
        job = blocked.submit()
        with pytest.raises(JobTimeoutError):
            job.result(timeout=0)
        assert backend.looks == [(0.0, 0.0)]
        backend.looks.clear()
        with pytest.raises(JobTimeoutError):
            job.wait(timeout=0.05)
    first, *later = backend.looks
    assert first == (pytest.approx(0.05), 0.0)
    assert later and all(0 < elapsed and timeout <= 0.05 for timeout, elapsed in later)
    assert [e for _, e in later] == sorted(e for _, e in later)


def test_the_default_wait_reads_at_once_on_a_first_look(backend: Recording) -> None:
    backend.set("k", 1)
    started = time.monotonic()
    assert backend.wait("x", ["k", "none"], timeout=math.inf, elapsed=0.0) == [1, MISSING]
    assert backend.wait("x", ["k"], timeout=0.0, elapsed=5.0) == [1]  # a later look: capped by timeout
    assert time.monotonic() - started < 1.0


# -- execute() with a Handoff, and mark_lost() ------------------------------------------------------


def _queued(app: Flask, store: JobStore, task: t.Any, job_id: str) -> Handoff:
    """A job created and claimed by hand, as the diskcache pool does for its worker."""
    args = store.backend.dumps(((), {}))
    store.create(job_id, {"task": task.name, "module": task._module, "app": app.import_name, "args": args}, None)
    started = time.time()
    assert store.claim(job_id, owner_of(1, 1), at=started)
    record, request, _ = store.backend.get_many(keys.to_run(job_id))
    return Handoff(started, record, request)


def test_execute_runs_a_handed_over_job(app: Flask, longtask: LongTask) -> None:
    ran: list[str] = []

    @longtask.task
    def note() -> str:
        ran.append("ran")
        return "ok"

    store = app.extensions["longtask"].store
    handoff = _queued(app, store, note, "h" * 32)
    assert execute(store.backend, "h" * 32, handoff=handoff) is JobStatus.SUCCEEDED
    with app.app_context():
        job = longtask.get_job("h" * 32)
        assert job.result() == "ok" and job.started_at is not None
        assert job.started_at.timestamp() == pytest.approx(handoff.started)
    # Too large to hand over: execute reads the request itself.
    handoff = _queued(app, store, note, "i" * 32)
    assert (
        execute(store.backend, "i" * 32, handoff=Handoff(handoff.started, handoff.record, None)) is JobStatus.SUCCEEDED
    )
    assert ran == ["ran", "ran"]


def test_a_handed_over_job_that_was_cancelled_or_not_let_go_does_not_run(app: Flask, longtask: LongTask) -> None:
    @longtask.task
    def never() -> None:
        raise AssertionError("must not run")

    store = app.extensions["longtask"].store
    handoff = _queued(app, store, never, "j" * 32)
    handoff.cancelled = True
    assert execute(store.backend, "j" * 32, handoff=handoff) is JobStatus.CANCELLED
    handoff = _queued(app, store, never, "k" * 32)
    asked: list[bool] = []
    handoff.go = lambda: asked.append(True) or False
    assert execute(store.backend, "k" * 32, handoff=handoff) is None
    assert asked == [True]
    assert store.backend.get(keys.end("k" * 32)) is MISSING  # nothing was written


def test_mark_lost_ends_a_claimed_job_in_its_app(app: Flask) -> None:
    store = app.extensions["longtask"].store
    store.create("l" * 32, {"task": "t", "module": None, "app": app.import_name, "args": b""}, None)
    assert store.claim("l" * 32, owner_of(1, 1))
    failed: list[t.Any] = []
    with signals.job_failed.connected_to(lambda sender, job, error: failed.append(error), sender=app):
        assert mark_lost(store.backend, "l" * 32, "it was killed", app=app) is True
        assert mark_lost(store.backend, "l" * 32, "it was killed", app=app) is False  # ended already
    assert [e["message"] for e in failed] == ["The worker running this job died: it was killed."]
    assert mark_lost(store.backend, "m" * 32, "no such job") is False
