"""The backend conformance suite: the contract every backend must honour, as pytest tests.

Subclass :class:`BackendConformance` in a test module, give it a function-scoped ``backend``
fixture that returns a fresh backend (and closes it afterwards), and pytest runs every test
below against it::

    import pytest
    from flask_longtask.testing import BackendConformance
    from mypackage import MyBackend

    class TestMyBackend(BackendConformance):
        @pytest.fixture
        def backend(self, tmp_path):
            backend = MyBackend(tmp_path)
            yield backend
            backend.close()

The job functions live at module level here so that backends running jobs in other processes
find them by name. Those processes make their own app through this module's ``app_factory``.
Cross-process waits use files in ``tmp_path`` (a "gate" a job waits for, a "log" a job appends
to), so the suite needs every worker on the same host as the tests.

A class, not loose functions, because a user's suite must bind one ``backend`` fixture to
every test at once: subclassing is pytest's own way to do that.
"""

from __future__ import annotations

import os
import threading
import time
import typing as t
from pathlib import Path

import pytest
from flask import Flask, current_app

from . import (
    JobCancelledError,
    JobFailedError,
    JobNotFoundError,
    JobStatus,
    JobTimeoutError,
    current_job,
    signals,
)
from ._conformance import _MARK, TIMEOUT, _lines, _make_app, _until
from ._conformance import longtask as longtask  # (its tasks are registered on it: users import it here)
from .backends.base import MISSING, Backend, JobRequest
from .newjobs import new_job_id
from .store import keys
from .testing_async import CoroutineConformance
from .testing_listing import ListingConformance
from .worker import owner_pid


def _wait_path(path: str, limit: float, cooperative: bool) -> bool:
    deadline = time.monotonic() + limit
    while not os.path.exists(path):
        if cooperative and current_job.is_cancel_requested:
            return False
        if time.monotonic() > deadline:
            raise TimeoutError(f"gate {path} never opened")
        time.sleep(0.005)
    return True


def _log(path: str | None, line: str) -> None:
    if path:
        with open(path, "a") as f:
            f.write(line + "\n")


@longtask.task
def echo(value: t.Any, log: str | None = None) -> t.Any:
    _log(log, "echo")
    return value


@longtask.task(cache_by=[])
def memo_echo(value: t.Any, log: str | None = None, gate: str | None = None) -> t.Any:
    _log(log, f"memo {value!r}")
    if gate:
        _wait_path(gate, TIMEOUT, cooperative=True)
    return value


@longtask.task(cache_by=[])
def memo_fail(log: str) -> None:
    _log(log, "fail")
    raise ValueError("memoized failure")


@longtask.task
def add(a: int, b: int = 2, *rest: int, scale: int = 1, **extra: int) -> int:
    return (a + b + sum(rest) + sum(extra.values())) * scale


@longtask.task
def count_to(n: int, gate: str | None = None) -> int:
    for i in range(1, n + 1):
        current_job.set_progress((i, n))
    if gate:
        _wait_path(gate, TIMEOUT, cooperative=True)
    return n


@longtask.task
def block(gate: str, log: str | None = None) -> str:
    """Wait for ``gate`` cooperatively (returns early on cancel)."""
    _log(log, "started")
    finished = _wait_path(gate, TIMEOUT, cooperative=True)
    _log(log, "finished" if finished else "saw-cancel")
    return "opened" if finished else "cancel-seen"


@longtask.task
def ignore_cancel(gate: str, log: str) -> str:
    """Never looks at the cancel flag; only a backend that can terminate stops it early."""
    _log(log, "started")
    _wait_path(gate, TIMEOUT, cooperative=False)
    _log(log, "finished")
    return "finished"


@longtask.task
def fail(message: str) -> None:
    raise ValueError(message)


@longtask.task(retries=1, retry_backoff=0.01, retry_on=ConnectionError)
def flaky(log: str) -> int:
    """Fails its first attempt; the second returns how many attempts it has seen."""
    _log(log, "attempt")
    seen = len(_lines(Path(log)))
    if seen == 1:
        raise ConnectionError("the first attempt fails")
    return seen


@longtask.task
def bad_result() -> t.Any:
    return (i for i in range(3))  # generators cannot be pickled, nor sent as JSON


@longtask.task
def app_config() -> t.Any:
    return current_app.config[_MARK]


class BackendConformance(ListingConformance, CoroutineConformance):
    """Every behaviour the core relies on from a backend. Subclass and provide ``backend``."""

    #: How many jobs the backend runs at once (default: its ``workers`` attribute).
    concurrency: int | None = None

    @pytest.fixture
    def backend(self) -> t.Iterator[Backend]:
        raise NotImplementedError("Define a 'backend' fixture in your BackendConformance subclass.")

    @pytest.fixture
    def app(self, backend: Backend) -> t.Iterator[Flask]:
        app = _make_app()
        app.config.update(LONGTASK_PROGRESS_INTERVAL=0.01, LONGTASK_CANCEL_GRACE=0.5)
        longtask.init_app(app, backend=backend)
        with app.app_context():
            yield app

    def _concurrency(self, backend: Backend) -> int:
        n = self.concurrency or getattr(backend, "workers", None)
        if not n:
            raise NotImplementedError("Set 'concurrency' on your BackendConformance subclass.")
        return int(n)

    # -- storage primitives ---------------------------------------------------------------------

    def test_get_set_delete_plain_data(self, backend: Backend) -> None:
        value = {"a": [1, 2.5, "x", None, True], "b": b"\x00\xff", "c": {"d": []}}
        assert backend.get("conf:missing") is MISSING
        backend.set("conf:k", value)
        assert backend.get("conf:k") == value
        backend.set("conf:k", None)
        assert backend.get("conf:k") is None
        backend.delete("conf:k")
        backend.delete("conf:k")
        assert backend.get("conf:k") is MISSING

    def test_get_many(self, backend: Backend) -> None:
        backend.set("conf:a", {"x": 1})
        backend.set("conf:b", b"bytes")
        assert backend.get_many(["conf:a", "conf:missing", "conf:b"]) == [{"x": 1}, MISSING, b"bytes"]
        with backend.batch():  # a read inside a batch sees the batch's earlier writes
            backend.set("conf:a", 2)
            assert backend.get_many(["conf:a"]) == [2]
            assert backend.get("conf:a") == 2

    def test_add_is_atomic(self, backend: Backend) -> None:
        wins = _contend(8, lambda i: backend.add("conf:once", i))
        assert len(wins) == 1
        assert backend.get("conf:once") == wins[0]
        assert backend.add("conf:once", "again") is False

    def test_delete_if_is_atomic(self, backend: Backend) -> None:
        backend.set("conf:owner", "job-1")
        assert backend.delete_if("conf:owner", "job-2") is False
        assert backend.get("conf:owner") == "job-1"
        assert len(_contend(8, lambda i: backend.delete_if("conf:owner", "job-1"))) == 1
        assert backend.get("conf:owner") is MISSING

    def test_claim_and_get(self, backend: Backend) -> None:
        backend.set("conf:rec", {"status": "queued"})
        wins = _contend(8, lambda i: backend.claim_and_get("conf:claim", i, 60, ["conf:rec", "conf:none"])[0])
        assert len(wins) == 1
        added, values = backend.claim_and_get("conf:claim", "late", 60, ["conf:rec", "conf:none"])
        assert added is False and values == [{"status": "queued"}, MISSING]
        assert backend.get("conf:claim") == wins[0]

    def test_add_then_write(self, backend: Backend) -> None:
        backend.set("conf:gone", 1)
        backend.set("conf:owned", "job-1")
        backend.set("conf:other", "job-2")
        writes = [
            ("set", "conf:rec", {"status": "succeeded"}, 60),
            ("delete", "conf:gone", None, None),
            ("delete_if", "conf:owned", "job-1", None),
            ("delete_if", "conf:other", "job-1", None),
        ]
        otherwise = [("set", "conf:rec", {"status": "cancelled"}, None)]
        assert backend.add_then_write("conf:end", 1.5, 60, writes, unless="conf:cancel", otherwise=otherwise) is True
        assert backend.get_many(["conf:end", "conf:rec", "conf:gone", "conf:owned", "conf:other"]) == [
            1.5,
            {"status": "succeeded"},
            MISSING,
            MISSING,
            "job-2",
        ]
        # Ended already: nothing is written.
        assert backend.add_then_write("conf:end", 2.5, 60, otherwise) is None
        assert backend.get("conf:rec") == {"status": "succeeded"}
        # The "unless" key exists: the other writes are applied instead.
        backend.set("conf:cancel", 1)
        assert backend.add_then_write("conf:end2", 1, None, writes, unless="conf:cancel", otherwise=otherwise) is False
        assert backend.get("conf:rec") == {"status": "cancelled"}
        # Atomic: of many at once, one applies its writes.
        won = _contend(8, lambda i: backend.add_then_write("conf:end3", i, 60, [("set", "conf:by", i, 60)]) is True)
        assert len(won) == 1 and backend.get("conf:by") == backend.get("conf:end3")

    def test_expire(self, backend: Backend) -> None:
        backend.set("conf:short", 1, expire=0.2)
        backend.set("conf:long", 2, expire=60)
        assert backend.add("conf:addshort", 3, expire=0.2)
        assert backend.get("conf:short") == 1
        _until(lambda: backend.get("conf:short") is MISSING, "an expired key to vanish")
        _until(lambda: backend.add("conf:addshort", 4), "add() to succeed on an expired key")
        assert backend.get("conf:long") == 2

    def test_scan(self, backend: Backend) -> None:
        for i in range(3):
            backend.set(f"conf-scan:{i}", i)
        backend.set("conf-other:0", 0)
        assert sorted(backend.scan("conf-scan:")) == ["conf-scan:0", "conf-scan:1", "conf-scan:2"]

    # -- jobs -----------------------------------------------------------------------------------

    def test_result_and_lifecycle(self, app: Flask) -> None:
        job = add.submit(1, 2, 3, 4, scale=2, x=10)
        assert job.status in (JobStatus.QUEUED, JobStatus.RUNNING, JobStatus.SUCCEEDED)
        assert job.result(timeout=TIMEOUT) == 40
        assert job.status is JobStatus.SUCCEEDED
        assert job.error is None
        assert job.result() == 40  # reads are not destructive
        assert job.created_at <= t.cast(t.Any, job.started_at) <= t.cast(t.Any, job.finished_at)
        assert longtask.get_job(job.id).result() == 40
        assert job.task == add.name

    def test_wait_answers_at_once_after_the_end(self, app: Flask, backend: Backend) -> None:
        # How Job.wait looks: after a job's end, its first look answers at once with the keys as
        # stored, the record first.
        job = add.submit(2, 3)
        assert job.result(timeout=TIMEOUT) == 5
        names = [keys.job(job.id), keys.result(job.id), keys.alive("conf-none")]
        started = time.monotonic()
        record, result, none = backend.wait(job.id, names, timeout=5, elapsed=0.0)
        assert time.monotonic() - started < 1.0
        assert record["status"] == JobStatus.SUCCEEDED.value and record["id"] == job.id
        assert backend.loads(result) == 5
        assert none is MISSING
        # So does a first look at a job nobody ever submitted.
        unknown = "0" * 32
        started = time.monotonic()
        assert backend.wait(unknown, [keys.job(unknown)], timeout=5, elapsed=0.0) == [MISSING]
        assert time.monotonic() - started < 1.0

    def test_store_and_enqueue(self, app: Flask, backend: Backend) -> None:
        # What a submit hands the backend: the records stored, the signal sent, the job run.
        announced: list[bool] = []
        job_id = new_job_id()
        arguments = {
            "task": echo.name,
            "module": echo._module,
            "app": app.import_name,
            "args": backend.dumps(((7,), {})),
        }
        store = app.extensions["longtask"].store
        new = store.new_job(
            JobRequest(job_id, echo.name, echo, app),
            arguments,
            None,
            announce=lambda: announced.append(backend.get(keys.job(job_id)) is not MISSING),
        )
        assert new.id == job_id and [w[1] for w in new.writes] == [keys.request(job_id), keys.job(job_id)]
        backend.store_and_enqueue(new)
        assert announced == [True]  # after the writes
        assert store.job(job_id).result(timeout=TIMEOUT) == 7

    def test_store_and_enqueue_many(self, app: Flask, backend: Backend, tmp_path: Path) -> None:
        # What Task.submit_many hands the backend: every job stored (and listed) before its
        # job_submitted signal, and run once.
        log = tmp_path / "log"
        stored: list[bool] = []

        def submitted(sender: t.Any, job: t.Any, **kwargs: t.Any) -> None:
            stored.append(backend.get(keys.job(job.id)) is not MISSING)

        with signals.job_submitted.connected_to(submitted, sender=app):
            jobs = echo.submit_many(range(30), [str(log)] * 30)
        assert [job.result(timeout=TIMEOUT) for job in jobs] == list(range(30))
        assert stored == [True] * 30
        assert len(_lines(log)) == 30
        assert {job.id for job in longtask.jobs(task=echo, limit=100)} >= {job.id for job in jobs}

    def test_unknown_job(self, app: Flask) -> None:
        with pytest.raises(JobNotFoundError):
            longtask.get_job("no-such-job")
        with pytest.raises(JobNotFoundError):
            _ = longtask.get_job("0" * 32).status

    def test_job_runs_in_app_context(self, app: Flask) -> None:
        assert app_config.submit().result(timeout=TIMEOUT) == "conformance-app"

    def test_progress_visible_while_running_and_kept_at_end(self, app: Flask, tmp_path: Path) -> None:
        gate = tmp_path / "gate"
        job = count_to.submit(500, str(gate))
        assert job.progress in (None,) or isinstance(job.progress, tuple)
        _until(lambda: job.progress == (500, 500), "the last progress value while running")
        assert job.status is JobStatus.RUNNING
        gate.touch()
        assert job.result(timeout=TIMEOUT) == 500
        assert job.progress == (500, 500)
        assert job.progress == (500, 500)

    def test_exception_fails_the_job(self, app: Flask) -> None:
        job = fail.submit("kaboom")
        with pytest.raises(JobFailedError) as info:
            job.result(timeout=TIMEOUT)
        assert "ValueError" in str(info.value) and "kaboom" in str(info.value)
        assert job.status is JobStatus.FAILED
        error = t.cast("dict[str, str]", job.error)
        assert error["type"] == "ValueError" and error["message"] == "kaboom"
        assert "Traceback" in error["traceback"] and "kaboom" in error["traceback"]

    def test_a_failed_attempt_is_retried(self, app: Flask, tmp_path: Path) -> None:
        # The backend's enqueue_after runs the job again; the core counts the attempts.
        job = flaky.submit(str(tmp_path / "log"))
        assert job.result(timeout=TIMEOUT) == 2
        assert job.attempt == 2 and job.retries == 1

    def test_a_retried_attempt_is_not_ended_again(self, app: Flask, backend: Backend, tmp_path: Path) -> None:
        # A retry takes the end claim of the attempt it ends (JobEnd.key and add_then_write's key
        # name the attempt): whoever read that attempt before cannot retry it again, nor end the
        # job with it. The next attempt runs, and ends with its own claim.
        assert echo.submit(0).result(timeout=TIMEOUT) == 0  # (the backend is up)
        store, log, job_id = app.extensions["longtask"].store, tmp_path / "log", new_job_id()
        log.write_text("attempt\n")  # the first attempt (claimed below, run by nobody)
        request = JobRequest(job_id, flaky.name, flaky, app)
        arguments = {
            "task": flaky.name,
            "module": flaky._module,
            "app": app.import_name,
            "args": backend.dumps(((str(log),), {})),
        }
        backend.write_all(store.new_job(request, arguments, None, announce=lambda: None, retries=1).writes)
        assert store.claim(job_id, "a conformance worker")
        attempt_1 = backend.get(keys.job(job_id))
        error = {"type": "ConnectionError", "message": "the first attempt fails", "traceback": ""}
        assert store.retry(attempt_1, error, 0.0, app=app, limited=False) is True
        assert store.retry(attempt_1, error, 0.0, app=app, limited=False) is None
        assert store.finish(attempt_1, JobStatus.FAILED, app=app, error=error) is None
        job = store.job(job_id)
        assert job.status is JobStatus.QUEUED and job.attempt == 2
        backend.enqueue_after(request, 0.0)
        assert job.result(timeout=TIMEOUT) == 2
        assert job.attempt == 2 and _lines(log) == ["attempt", "attempt"]

    def test_unserialisable_result_fails_clearly(self, app: Flask) -> None:
        job = bad_result.submit()
        with pytest.raises(JobFailedError, match="result could not be serialised"):
            job.result(timeout=TIMEOUT)

    def test_unserialisable_argument_is_refused_at_submit(self, app: Flask, backend: Backend) -> None:
        before = set(backend.scan(keys.JOB_PREFIX))
        with pytest.raises(TypeError, match="'value'"):
            echo.submit(i for i in range(3))
        assert set(backend.scan(keys.JOB_PREFIX)) == before

    def test_wrong_arguments_are_refused_at_submit(self, app: Flask, backend: Backend) -> None:
        before = set(backend.scan(keys.JOB_PREFIX))
        with pytest.raises(TypeError):
            echo.submit(1, 2, 3, 4)  # type: ignore[call-arg, arg-type]
        with pytest.raises(TypeError):
            echo.submit(nonsense=1)  # type: ignore[call-arg]
        assert set(backend.scan(keys.JOB_PREFIX)) == before

    def test_wait_timeout(self, app: Flask, tmp_path: Path) -> None:
        job = block.submit(str(tmp_path / "gate"))
        with pytest.raises(JobTimeoutError):
            job.result(timeout=0.2)
        (tmp_path / "gate").touch()
        assert job.result(timeout=TIMEOUT) == "opened"

    def test_cancel_queued_job_never_runs(self, app: Flask, backend: Backend, tmp_path: Path) -> None:
        gate, log = tmp_path / "gate", tmp_path / "log"
        blockers = [block.submit(str(gate)) for _ in range(self._concurrency(backend))]
        _until(lambda: all(j.status is JobStatus.RUNNING for j in blockers), "every worker to be busy")
        victim = echo.submit("victim", str(log))
        assert victim.status is JobStatus.QUEUED
        with signals.job_cancelled.connected_to(_record := _Recorder(), sender=app):
            victim.cancel()
        assert victim.status is JobStatus.CANCELLED  # type: ignore[comparison-overlap]
        assert _record.jobs == [victim]
        gate.touch()
        for j in blockers:
            assert j.result(timeout=TIMEOUT) == "opened"
        assert echo.submit("after", str(log)).result(timeout=TIMEOUT) == "after"
        assert _lines(log) == ["echo"]  # only "after" ran
        with pytest.raises(JobCancelledError):
            victim.result(timeout=TIMEOUT)

    def test_cancel_running_job_cooperatively(self, app: Flask, tmp_path: Path) -> None:
        log = tmp_path / "log"
        job = block.submit(str(tmp_path / "gate"), str(log))
        _until(lambda: _lines(log) == ["started"], "the job to start")
        job.cancel()
        assert job.wait(timeout=TIMEOUT) is JobStatus.CANCELLED
        with pytest.raises(JobCancelledError):
            job.result()
        job.cancel()  # no-op once finished
        assert job.status is JobStatus.CANCELLED

    def test_cancel_running_job_that_ignores_the_flag(self, app: Flask, backend: Backend, tmp_path: Path) -> None:
        gate, log = tmp_path / "gate", tmp_path / "log"
        job = ignore_cancel.submit(str(gate), str(log))
        _until(lambda: _lines(log) == ["started"], "the job to start")
        job.cancel()
        if backend.can_terminate:
            # Stopped by force after the grace period (0.5 s here), without any help from the job.
            assert job.wait(timeout=5) is JobStatus.CANCELLED
            gate.touch()
            assert echo.submit("next").result(timeout=TIMEOUT) == "next"
            assert "finished" not in _lines(log)
        else:
            assert job.status is JobStatus.RUNNING
            gate.touch()
            # It returned normally, but cancellation was requested: the value is discarded.
            assert job.wait(timeout=TIMEOUT) is JobStatus.CANCELLED

    def test_cancel_finished_job_is_a_noop(self, app: Flask) -> None:
        job = echo.submit(1)
        assert job.result(timeout=TIMEOUT) == 1
        job.cancel()
        assert job.status is JobStatus.SUCCEEDED and job.result() == 1

    def test_memoized_result_is_reused(self, app: Flask, tmp_path: Path) -> None:
        log = tmp_path / "log"
        first = memo_echo.submit(1, str(log))
        assert first.result(timeout=TIMEOUT) == 1
        with signals.cache_hit.connected_to(hits := _Recorder(), sender=app):
            again = memo_echo.submit(value=1, log=str(log))
        assert again == first and again.status is JobStatus.SUCCEEDED
        assert hits.jobs == [first]
        assert memo_echo.submit(2, str(log)).result(timeout=TIMEOUT) == 2
        assert _lines(log) == ["memo 1", "memo 2"]
        longtask.clear_cache(memo_echo)
        assert memo_echo.submit(1, str(log)).result(timeout=TIMEOUT) == 1
        assert _lines(log) == ["memo 1", "memo 2", "memo 1"]

    def test_single_flight(self, app: Flask, tmp_path: Path) -> None:
        gate, log = tmp_path / "gate", tmp_path / "log"
        jobs = [memo_echo.submit("same", str(log), str(gate)) for _ in range(5)]
        assert len({j.id for j in jobs}) == 1
        gate.touch()
        assert jobs[0].result(timeout=TIMEOUT) == "same"
        assert _lines(log) == ["memo 'same'"]

    def test_failures_are_not_memoized(self, app: Flask, tmp_path: Path) -> None:
        log = tmp_path / "log"
        for _ in range(2):
            with pytest.raises(JobFailedError):
                memo_fail.submit(str(log)).result(timeout=TIMEOUT)
        assert _lines(log) == ["fail", "fail"]

    def test_signals_in_order(self, app: Flask) -> None:
        seen: list[str] = []

        def on(name: str) -> t.Callable[..., None]:
            return lambda sender, job, **kw: seen.append(name)

        receivers = {name: on(name) for name in ("submitted", "started", "succeeded")}
        with (
            signals.job_submitted.connected_to(receivers["submitted"], sender=app),
            signals.job_started.connected_to(receivers["started"], sender=app),
            signals.job_succeeded.connected_to(receivers["succeeded"], sender=app),
        ):
            job = echo.submit(5)
            job.result(timeout=TIMEOUT)
            if _runs_in_this_process(app, job.id):
                _until(lambda: "succeeded" in seen, "job_succeeded")
                assert seen == ["submitted", "started", "succeeded"]
            else:  # the worker process sends the others, to its own receivers
                assert seen == ["submitted"]

    def test_record_expires(self, app: Flask) -> None:
        app.extensions["longtask"].store.result_expire = 0.5
        job = echo.submit(1)
        assert job.result(timeout=TIMEOUT) == 1
        _until(lambda: _gone(job), "the finished job's record to expire")

    def test_many_jobs_each_run_once(self, app: Flask, tmp_path: Path) -> None:
        log = tmp_path / "log"
        jobs = [echo.submit(i, str(log)) for i in range(100)]
        assert [j.result(timeout=TIMEOUT) for j in jobs] == list(range(100))
        assert len(_lines(log)) == 100


def _contend(threads: int, attempt: t.Callable[[int], bool]) -> list[int]:
    """Run ``attempt(i)`` in ``threads`` threads released at once; the ``i`` that succeeded."""
    wins: list[int] = []
    barrier = threading.Barrier(threads)

    def run(i: int) -> None:
        barrier.wait()
        if attempt(i):
            wins.append(i)

    pool = [threading.Thread(target=run, args=(i,)) for i in range(threads)]
    for th in pool:
        th.start()
    for th in pool:
        th.join()
    return wins


class _Recorder:
    def __init__(self) -> None:
        self.jobs: list[t.Any] = []

    def __call__(self, sender: t.Any, job: t.Any, **kwargs: t.Any) -> None:
        self.jobs.append(job)


def _gone(job: t.Any) -> bool:
    try:
        _ = job.status
    except JobNotFoundError:
        return True
    return False


def _runs_in_this_process(app: Flask, job_id: str) -> bool:
    return owner_pid(app.extensions["longtask"].backend.get(keys.claim(job_id))) == os.getpid()
