"""The extension, tasks, memoization, signals and bad input, on ThreadBackend."""

from __future__ import annotations

import re
import threading
import time

import pytest
from flask import Flask, current_app, request

from flask_longtask import (
    Job,
    JobFailedError,
    JobNotFoundError,
    JobStatus,
    LongTask,
    LongTaskError,
    current_job,
    signals,
)
from flask_longtask.backends import MISSING, ThreadBackend, backend_class
from flask_longtask.extension import DEFAULT_CONFIG
from flask_longtask.store import JobStore, keys

from .helpers import wait_for

# -- the extension ------------------------------------------------------------------------------


def test_init_app_registers_and_sets_defaults():
    app = Flask(__name__)
    app.config["LONGTASK_RESULT_EXPIRE"] = 5
    longtask = LongTask()
    longtask.init_app(app, backend=ThreadBackend(1))
    assert app.extensions["longtask"].longtask is longtask
    assert app.config["LONGTASK_RESULT_EXPIRE"] == 5  # the app's own value wins
    for key in DEFAULT_CONFIG:
        assert key in app.config
    assert not hasattr(longtask, "app")


def test_double_registration_is_refused():
    app = Flask(__name__)
    LongTask(app, backend=ThreadBackend(1))
    with pytest.raises(RuntimeError, match="already been registered"):
        LongTask(app, backend=ThreadBackend(1))


def test_use_with_an_unregistered_app_says_how_to_fix():
    longtask = LongTask(backend=ThreadBackend(1))

    @longtask.task
    def f() -> None: ...

    with Flask(__name__).app_context():
        with pytest.raises(RuntimeError, match="Did you forget to call 'init_app'"):
            f.submit()
    with pytest.raises(RuntimeError, match="outside of application context"):
        f.submit()


def test_one_extension_serves_several_apps():
    longtask = LongTask()

    @longtask.task
    def name() -> str:
        return current_app.name

    apps = [Flask(f"app{i}") for i in range(2)]
    for app in apps:
        longtask.init_app(app, backend=ThreadBackend(1))
    for app in apps:
        with app.app_context():
            assert name.submit().result(timeout=10) == app.name
            assert longtask.backend is app.extensions["longtask"].backend


def test_backend_chosen_by_config():
    app = Flask(__name__)
    app.config.update(LONGTASK_BACKEND="thread", LONGTASK_WORKERS=3)
    LongTask(app)
    backend = app.extensions["longtask"].backend
    assert isinstance(backend, ThreadBackend) and backend.workers == 3
    assert backend_class("flask_longtask.backends.thread:ThreadBackend") is ThreadBackend
    with pytest.raises(ValueError, match="Unknown LONGTASK_BACKEND 'nope'"):
        backend_class("nope")
    with pytest.raises(ValueError, match="not a flask_longtask.backends.Backend"):
        backend_class("flask_longtask.job:Job")


def test_dash_app_server():
    dash = pytest.importorskip("dash")
    dash_app = dash.Dash(__name__)
    longtask = LongTask(dash_app.server, backend=ThreadBackend(1))

    @longtask.task
    def triple(n: int) -> int:
        return n * 3

    with dash_app.server.app_context():
        assert triple.submit(3).result(timeout=10) == 9


# -- tasks --------------------------------------------------------------------------------------


def test_task_decorator_forms_and_inline_call(longtask):
    @longtask.task
    def plain(n: int) -> int:
        current_job.set_progress(n)  # a stand-in when called inline
        assert not current_job.is_cancel_requested
        return n + 1

    @longtask.task(name="custom.name")
    def named() -> str:
        return "x"

    assert plain(1) == 2
    assert plain.__name__ == "plain" and plain.name.endswith("plain")
    assert named.name == "custom.name"
    with pytest.raises(TypeError, match="cache_by"):
        longtask.task(cache_by=[1])(plain.func)


def test_current_job_outside_a_job():
    with pytest.raises(RuntimeError, match="outside of a job"):
        current_job.set_progress(1)


def test_job_ids_are_unguessable_and_status_is_a_str_enum(app, longtask):
    @longtask.task
    def noop() -> None: ...

    with app.app_context():
        jobs = [noop.submit() for _ in range(20)]
        for job in jobs:
            job.result(timeout=10)
    assert len({j.id for j in jobs}) == 20
    assert all(re.fullmatch(r"[0-9a-f]{32}", j.id) for j in jobs)
    # The submit time (ms) first, so storage writes new jobs side by side; then 80 random bits.
    stamps = [int(j.id[:12], 16) for j in jobs]
    assert stamps == sorted(stamps) and abs(stamps[0] - time.time() * 1000) < 60_000
    assert len({j.id[12:] for j in jobs}) == 20
    assert JobStatus.SUCCEEDED == "succeeded" and str(JobStatus.QUEUED) == "queued"
    assert JobStatus.CANCELLED.is_finished and not JobStatus.RUNNING.is_finished


def test_get_job_from_another_handle(app, longtask):
    @longtask.task
    def value() -> dict:
        return {"a": 1}

    with app.app_context():
        job = value.submit()
        same = longtask.get_job(job.id)
        assert isinstance(same, Job) and same == job
        assert same.result(timeout=10) == {"a": 1}
        with pytest.raises(JobNotFoundError) as info:
            longtask.get_job("f" * 32)
        assert isinstance(info.value, LongTaskError) and "f" * 32 in str(info.value)


def test_exception_message_and_remote_traceback(app, longtask):
    @longtask.task
    def explode(x: int) -> None:
        raise KeyError(f"missing {x}")

    with app.app_context():
        job = explode.submit(7)
        with pytest.raises(JobFailedError) as info:
            job.result(timeout=10)
    err = info.value
    assert str(err) == "KeyError: 'missing 7'"
    assert err.type == "KeyError" and err.job_id == job.id and "explode" in err.traceback


# -- progress -----------------------------------------------------------------------------------


def test_progress_in_a_tight_loop_is_coalesced_and_the_last_value_kept(app, longtask):
    stored: list = []

    @longtask.task
    def spin(n: int) -> int:
        for i in range(n):
            current_job.set_progress(i)
        return n

    with signals.job_progress.connected_to(lambda s, job, progress: stored.append(progress), sender=app):
        with app.app_context():
            job = spin.submit(200_000)
            assert job.result(timeout=30) == 200_000
            assert job.progress == 199_999
    assert stored[-1] == 199_999
    assert len(stored) < 1000  # one write per interval, not per call


def test_unserialisable_progress_raises_at_the_next_current_job_set_progress(app, longtask):
    @longtask.task
    def tell() -> str:
        current_job.set_progress(threading.Lock())
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:  # the job's own loop: until the ticker has tried it
            try:
                current_job.set_progress  # noqa: B018 - the look-up raises (a call would replace the value)
            except TypeError as exc:
                return str(exc)
            time.sleep(0.01)
        return "never raised"

    with app.app_context():
        assert tell.submit().result(timeout=30).startswith("A progress value could not be serialised")


def test_unserialisable_progress_fails_the_job(app, longtask):
    @longtask.task
    def bad_progress() -> None:
        current_job.set_progress(threading.Lock())

    with app.app_context():
        with pytest.raises(JobFailedError, match="progress value could not be serialised"):
            bad_progress.submit().result(timeout=10)


# -- memoization ----------------------------------------------------------------------------------


def test_memo_key_normalises_arguments(app, longtask):
    runs: list = []

    @longtask.task(cache_by=[])
    def f(a: int, b: int = 2, **kw: int) -> int:
        runs.append((a, b, kw))
        return a + b

    with app.app_context():
        first = f.submit(1, x=1, y=2)
        first.result(timeout=10)
        assert f.submit(a=1, b=2, y=2, x=1) == first
        other = f.submit(1, 3, x=1, y=2)
        assert other != first and other.result(timeout=10) == 4
    assert len(runs) == 2


def test_cache_by_values_come_from_the_submitting_request(app, longtask):
    runs: list = []

    @longtask.task(cache_by=[lambda: request.headers.get("X-User")])
    def report(n: int) -> int:
        runs.append(n)
        return n

    for user in ("ann", "bob", "ann"):
        with app.test_request_context(headers={"X-User": user}):
            report.submit(1).result(timeout=10)
    assert runs == [1, 1]  # ann's second request was a cache hit


def test_memo_expiry_and_clear_all(app, longtask):
    runs: list = []

    @longtask.task(cache_by=[], expire=0.3)
    def f() -> int:
        runs.append(1)
        return len(runs)

    with app.app_context():
        assert f.submit().result(timeout=10) == 1
        assert f.submit().result(timeout=10) == 1
        wait_for(lambda: f.submit().result(timeout=10) == 2, what="the memo to expire")
        longtask.clear_cache()
        assert f.submit().result(timeout=10) == 3


def test_cancelled_jobs_are_not_memoized(app, longtask):
    started = threading.Event()

    @longtask.task(cache_by=[])
    def slow() -> str:
        started.set()
        while not current_job.is_cancel_requested:
            time.sleep(0.005)  # the job's own work: waiting to be cancelled
        return "ignored"

    with app.app_context():
        job = slow.submit()
        assert started.wait(10)
        job.cancel()
        assert job.wait(10) is JobStatus.CANCELLED
        started.clear()
        again = slow.submit()
        assert again != job
        assert started.wait(10)
        again.cancel()
        assert again.wait(10) is JobStatus.CANCELLED


def test_single_flight_across_threads(app, longtask):
    release = threading.Event()
    runs: list = []

    @longtask.task(cache_by=[])
    def shared() -> int:
        runs.append(1)
        release.wait(10)
        return 42

    ids: list = []

    def submit() -> None:
        with app.app_context():
            ids.append(shared.submit().id)

    threads = [threading.Thread(target=submit) for _ in range(16)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    release.set()
    assert len(set(ids)) == 1
    with app.app_context():
        assert longtask.get_job(ids[0]).result(timeout=10) == 42
    assert runs == [1]


# -- signals --------------------------------------------------------------------------------------


def test_every_signal_and_its_arguments(app, longtask):
    got: list = []

    def recorder(name):
        def receive(sender, job, **kw):
            assert sender is app
            got.append((name, job.id, kw))

        return receive

    @longtask.task(cache_by=[])
    def ok(n: int) -> int:
        current_job.set_progress("half")
        return n

    @longtask.task
    def bad() -> None:
        raise ValueError("no")

    names = ["job_submitted", "job_started", "job_progress", "job_succeeded", "job_failed", "cache_hit"]
    receivers = [recorder(n) for n in names]
    for name, receiver in zip(names, receivers, strict=True):
        getattr(signals, name).connect(receiver, sender=app)
    try:
        with app.app_context():
            job = ok.submit(1)
            job.result(timeout=10)
            wait_for(lambda: any(g[0] == "job_succeeded" for g in got), what="job_succeeded")
            assert ok.submit(1) == job
            failed = bad.submit()
            failed.wait(10)
            wait_for(lambda: any(g[0] == "job_failed" for g in got), what="job_failed")
    finally:
        for name, receiver in zip(names, receivers, strict=True):
            getattr(signals, name).disconnect(receiver)
    by_name = {name: (jid, kw) for name, jid, kw in got}
    assert [g[0] for g in got if g[1] == job.id] == [
        "job_submitted",
        "job_started",
        "job_progress",
        "job_succeeded",
        "cache_hit",
    ]
    assert by_name["job_progress"][1] == {"progress": "half"}
    assert by_name["job_succeeded"][1] == {"result": 1}
    assert by_name["cache_hit"][1] == {"in_flight": False}
    assert by_name["job_failed"][0] == failed.id
    assert by_name["job_failed"][1]["error"]["message"] == "no"


def test_a_raising_receiver_breaks_nothing(app, longtask, caplog):
    def broken(sender, **kw):
        raise RuntimeError("receiver bug")

    @longtask.task
    def ok() -> str:
        current_job.set_progress(1)
        return "fine"

    with (
        signals.job_submitted.connected_to(broken, sender=app),
        signals.job_started.connected_to(broken, sender=app),
        signals.job_progress.connected_to(broken, sender=app),
        signals.job_succeeded.connected_to(broken, sender=app),
        app.app_context(),
    ):
        assert ok.submit().result(timeout=10) == "fine"
    assert "receiver bug" in caplog.text


# -- a job never stays "running" forever ----------------------------------------------------------


def test_running_job_without_heartbeat_is_failed_as_lost(app, longtask):
    """A worker that dies mid-job stops beating; the next reader ends the job as failed."""
    store = JobStore(app.extensions["longtask"].backend, heartbeat_timeout=0.2)
    store.create("lost1", {"task": "t", "module": None, "app": app.import_name, "args": b""}, None)
    assert store.claim("lost1", "a worker that is about to die")
    store.beat("lost1")
    with app.app_context():
        job = store.job("lost1")  # read with this store's 0.2 s heartbeat timeout
        assert job.status is JobStatus.RUNNING
        assert wait_for(lambda: job.status is JobStatus.FAILED, what="the lost job to fail")
        assert job.error["type"] == "WorkerLostError"
        assert "no heartbeat" in job.error["message"]


def test_claimed_job_reads_running_and_is_lost_without_a_heartbeat(app, longtask):
    """A worker's claim makes a job "running" at once; a worker that dies before its first
    heartbeat leaves none, and the job fails once the heartbeat timeout has passed since the claim."""
    store = JobStore(app.extensions["longtask"].backend, heartbeat_timeout=0.3)
    store.create("lost2", {"task": "t", "module": None, "app": app.import_name, "args": b""}, None)
    with app.app_context():
        job = store.job("lost2")
        assert job.status is JobStatus.QUEUED
        claimed_at = time.time()
        assert store.claim("lost2", "a worker that dies before its first tick", at=claimed_at)
        assert store.backend.get(keys.job("lost2"))["status"] == "queued"  # the record is rewritten at the end
        assert job.status is JobStatus.RUNNING
        assert job.started_at is not None and job.started_at.timestamp() == pytest.approx(claimed_at)
        assert wait_for(lambda: job.status is JobStatus.FAILED, what="the job to fail")
        assert time.time() - claimed_at >= 0.3
        assert job.error["type"] == "WorkerLostError"
        assert job.started_at.timestamp() == pytest.approx(claimed_at)  # kept in the final record


def test_cancel_claim_does_not_read_as_running(app, longtask):
    store = JobStore(app.extensions["longtask"].backend)
    store.create("c1", {"task": "t", "module": None, "app": app.import_name, "args": b""}, None)
    with app.app_context():
        longtask.get_job("c1").cancel()
        assert longtask.get_job("c1").status is JobStatus.CANCELLED
        assert store.backend.get(keys.claim("c1"))["by"] == "cancel"


def test_enqueue_failure_leaves_nothing_behind(app, longtask, backend, monkeypatch):
    @longtask.task(cache_by=[])
    def f() -> int:
        return 1

    def refuse(request):
        raise ConnectionError("broker down")

    monkeypatch.setattr(backend, "enqueue", refuse)
    with app.app_context():
        with pytest.raises(ConnectionError):
            f.submit()
        assert list(backend.scan(keys.JOB_PREFIX)) == []
        assert list(backend.scan(keys.inflight(""))) == []
        monkeypatch.undo()
        assert f.submit().result(timeout=10) == 1


def test_cache_ignore_leaves_parameters_out_of_the_key(app, longtask):
    runs: list = []

    @longtask.task(cache_by=[], cache_ignore=["note"])
    def f(x: int, note: str = "") -> str:
        runs.append(note)
        return f"{x}:{note}"

    with app.app_context():
        assert f.submit(1, note="first").result(timeout=10) == "1:first"
        assert f.submit(1, note="second").result(timeout=10) == "1:first"  # same key: a hit
        assert f.submit(2, note="third").result(timeout=10) == "2:third"
    assert runs == ["first", "third"]
    with pytest.raises(ValueError, match="does not have"):
        longtask.task(cache_by=[], cache_ignore=["nope"])(lambda x: x)


def test_single_flight_never_joins_a_job_being_cancelled(app, longtask):
    started = threading.Event()

    @longtask.task(cache_by=[])
    def slow() -> str:
        started.set()
        while not current_job.is_cancel_requested:
            time.sleep(0.005)  # the job's work: waiting to be cancelled
        time.sleep(0.2)  # still winding down when the next submit arrives
        return "old"

    with app.app_context():
        old = slow.submit()
        assert started.wait(10)
        old.cancel()
        assert old.is_cancel_requested
        new = slow.submit()
        assert new != old
        new.cancel()
        assert new.wait(10) is JobStatus.CANCELLED and old.wait(10) is JobStatus.CANCELLED


# -- what a worker process may find --------------------------------------------------------------


def _queue_by_hand(app, job_id, task, module, args):
    store = app.extensions["longtask"].store
    store.create(job_id, {"task": task, "module": module, "app": app.import_name, "args": args}, None)


def test_a_task_the_worker_cannot_find_fails_clearly(app, longtask, backend):
    from flask_longtask.worker import execute

    _queue_by_hand(app, "a" * 32, "nowhere.f", "no_such_module_for_longtask", b"")
    assert execute(backend, "a" * 32) is JobStatus.FAILED
    with app.app_context():
        error = longtask.get_job("a" * 32).error
    assert error["type"] == "LookupError"
    assert "cannot be found in this worker process" in error["message"]
    assert "no_such_module_for_longtask" in error["message"]
    assert execute(backend, "a" * 32) is None  # ended: a second delivery runs nothing


def test_arguments_the_worker_cannot_read_fail_the_job(app, longtask, backend):
    from flask_longtask.worker import execute

    @longtask.task
    def f(x: int) -> int:
        return x

    _queue_by_hand(app, "b" * 32, f.name, f._module, b"this is not a pickle")
    assert execute(backend, "b" * 32, task=f, app=app) is JobStatus.FAILED
    with app.app_context():
        assert "could not be deserialised" in longtask.get_job("b" * 32).error["message"]


def test_current_job_inside_and_outside_a_job(app, longtask):
    @longtask.task
    def inside() -> tuple:
        current_job.set_progress({"step": 1})
        return current_job.id, current_job.progress, current_job.is_cancel_requested, repr(current_job)

    with app.app_context():
        job = inside.submit()
        job_id, progress, cancelled, text = job.result(timeout=10)
    assert (job_id, progress, cancelled) == (job.id, {"step": 1}, False)
    assert text == f"<current_job {job.id}>"
    assert repr(current_job) == "<current_job: none>"
    for read in (lambda: current_job.id, lambda: current_job.progress, lambda: current_job.is_cancel_requested):
        with pytest.raises(RuntimeError, match="outside of a job"):
            read()


def test_a_job_that_raises_systemexit_fails_and_the_thread_survives(app, longtask):
    @longtask.task
    def leave() -> None:
        raise SystemExit(3)

    @longtask.task
    def after() -> str:
        return "still here"

    with app.app_context():
        job = leave.submit()
        assert job.wait(10) is JobStatus.FAILED
        assert job.error["type"] == "SystemExit"
        assert after.submit().result(timeout=10) == "still here"


def test_single_flight_does_not_join_a_job_whose_worker_is_gone(app, longtask):
    store = app.extensions["longtask"].store
    store.heartbeat_timeout = 0.2

    @longtask.task(cache_by=[])
    def shared() -> int:
        return 1

    with app.app_context():
        # A "running" job of this memo key whose worker died: it holds the in-flight key.
        bound = shared.signature.bind()
        from flask_longtask import memo

        key = memo.make_key(shared.name, bound, [], store.memo_generation(shared.name))
        store.create("d" * 32, {"task": shared.name, "module": None, "app": app.import_name, "args": b""}, key)
        assert store.join_inflight(key, "d" * 32) is None
        assert store.claim("d" * 32, "a worker that dies")
        store.beat("d" * 32)
        wait_for(lambda: store.backend.get(keys.alive("d" * 32)) is MISSING, what="the heartbeat to lapse")
        job = shared.submit()
        assert job.id != "d" * 32 and job.result(timeout=10) == 1
        assert longtask.get_job("d" * 32).status is JobStatus.FAILED


def _memo_key_of(store: JobStore, task) -> str:
    from flask_longtask import memo

    return memo.make_key(task.name, task.signature.bind(), [], store.memo_generation(task.name))


def test_single_flight_waits_for_the_job_its_key_names_to_be_written(app, longtask, monkeypatch):
    """A submit registers the in-flight key just before it writes the job: a second identical
    submit in between joins that job instead of taking its place (a duplicate run)."""
    store = app.extensions["longtask"].store

    @longtask.task(cache_by=[])
    def shared() -> int:
        return 1

    looked = threading.Event()
    read_record = store.read_record

    def spied(job_id: str) -> dict:
        try:
            return read_record(job_id)
        finally:
            looked.set()

    monkeypatch.setattr(store, "read_record", spied)
    first, second = "a" * 32, "b" * 32
    with app.app_context():
        key = _memo_key_of(store, shared)
        assert store.join_inflight(key, first) is None  # the first submit, before its write
        joined: list = []
        other = threading.Thread(target=lambda: joined.append(store.join_inflight(key, second)))
        other.start()
        assert looked.wait(10)  # the second submit found the key but no job yet
        store.create(first, {"task": shared.name, "module": None, "app": app.import_name, "args": b""}, key)
        other.join(10)
    assert [job.id for job in joined] == [first]


def test_single_flight_takes_over_a_key_whose_submitter_never_wrote_its_job(app, longtask, monkeypatch):
    store = app.extensions["longtask"].store
    monkeypatch.setattr("flask_longtask.store.INFLIGHT_WAIT", 0.2)

    @longtask.task(cache_by=[])
    def shared() -> int:
        return 2

    with app.app_context():
        assert store.join_inflight(_memo_key_of(store, shared), "c" * 32) is None  # then it died
        job = shared.submit()
        assert job.id != "c" * 32 and job.result(timeout=10) == 2
        assert store.backend.get(keys.inflight(_memo_key_of(store, shared))) in (MISSING, job.id)


def test_an_end_left_half_written_by_a_dead_process_is_completed(app, longtask):
    """On a store without transactions, a worker killed inside finish() leaves its end claim
    and a "running" record; once its heartbeat lapses the next reader ends the job."""
    store = app.extensions["longtask"].store
    store.heartbeat_timeout = 0.2
    store.create("e" * 32, {"task": "t", "module": None, "app": app.import_name, "args": b""}, None)
    assert store.claim("e" * 32, "a worker")
    store.beat("e" * 32)
    assert store.backend.add(keys.end("e" * 32), time.time() - 60)  # claimed, then died
    with app.app_context():
        job = longtask.get_job("e" * 32)
        assert wait_for(lambda: job.status is JobStatus.FAILED, what="the job to be ended")
        assert job.error["type"] == "WorkerLostError"
