"""CeleryBackend against a real redis-server and a real prefork Celery worker (no eager mode)."""

from __future__ import annotations

import datetime as dt
import os
import signal
import subprocess
import sys
import textwrap
import threading
import uuid

import pytest
from flask import Flask

from flask_longtask import JobFailedError, JobStatus, LongTask, LongTaskError, TamperedValueError
from flask_longtask.backends.base import MISSING
from flask_longtask.store import keys
from flask_longtask.testing import BackendConformance

from .helpers import retrying_lines, wait_for
from .services import start_celery_worker, start_redis, stop, wait_until

celery = pytest.importorskip("celery")
from flask_longtask.backends.celery import CeleryBackend  # noqa: E402

pytestmark = pytest.mark.xdist_group("celery")


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory):
    proc, url = start_redis(tmp_path_factory.mktemp("redis"))
    yield url
    stop(proc)


@pytest.fixture(scope="module")
def celery_worker(redis_url, tmp_path_factory):
    log = tmp_path_factory.mktemp("celery") / "worker.log"
    proc = start_celery_worker("tests.celery_app:celery_app", redis_url, log, concurrency=2)
    probe = celery.Celery("probe", broker=redis_url)
    try:
        wait_until(lambda: probe.control.ping(timeout=0.5), 60, "the Celery worker to answer ping")
    except RuntimeError:
        stop(proc)
        raise RuntimeError("Celery worker did not start:\n" + log.read_text()[-3000:]) from None
    yield proc
    stop(proc)
    with pytest.raises(ProcessLookupError):  # no orphaned pool process survives the worker
        os.killpg(proc.pid, 0)


def _clean_backend(redis_url: str) -> CeleryBackend:
    backend = CeleryBackend(celery.Celery("tests.client", broker=redis_url), redis_url=redis_url)
    for key in list(backend.scan("")):
        backend.delete(key)
    return backend


class TestCeleryConformance(BackendConformance):
    concurrency = 2
    stops_stubborn_coroutines = True  # (its prefork pool)

    @pytest.fixture
    def backend(self, redis_url, celery_worker):
        backend = _clean_backend(redis_url)
        yield backend
        backend.close()


@pytest.fixture
def app(redis_url, celery_worker):
    """An app whose tasks are those of tests/celery_app.py, the module the worker imported."""
    from tests import celery_app as worker_module

    app = Flask("tests.celery_client")
    app.config.update(LONGTASK_CANCEL_GRACE=0.5)
    backend = _clean_backend(redis_url)
    worker_module.longtask.init_app(app, backend=backend)
    with app.app_context():
        yield app
    backend.close()


def test_tagged_json_values_round_trip_through_a_worker(app):
    from tests.celery_app import roundtrip

    value = {"tuple": (1, 2), "bytes": b"\x00\xff", "when": dt.datetime(2024, 5, 6, 7, 8, 9), 3: {"a"}}
    assert roundtrip.submit(value).result(timeout=30) == value


def test_value_json_cannot_carry_fails_at_submit(app):
    from tests.celery_app import roundtrip

    with pytest.raises(TypeError, match="'value'.*as JSON"):
        roundtrip.submit(object())


def test_progress_and_app_context_on_the_worker(app):
    from tests.celery_app import progress_steps

    job = progress_steps.submit(20)
    assert job.result(timeout=30) == "celery-worker-app"
    assert job.progress == {"step": 20, "of": 20}


def test_killed_worker_process_fails_the_job(app, tmp_path):
    from tests.celery_app import pid_then_wait, roundtrip

    pid_file = tmp_path / "pid"
    job = pid_then_wait.submit(str(pid_file), 60)
    pid = int(wait_for(lambda: pid_file.exists() and pid_file.read_text(), what="the job's pid"))
    os.kill(pid, signal.SIGKILL)
    assert job.wait(timeout=15) is JobStatus.FAILED
    assert job.error["type"] == "WorkerLostError"
    assert "died" in job.error["message"]
    assert roundtrip.submit("still works").result(timeout=30) == "still works"


OTHER_PROCESS = textwrap.dedent(
    """
    import sys, json
    from celery import Celery
    from flask import Flask
    from flask_longtask import LongTask
    from flask_longtask.backends.celery import CeleryBackend
    import tests.celery_app  # the tasks, as any web process of the app has them

    url, action, arg = sys.argv[1:4]
    app = Flask("another-web-process")
    backend = CeleryBackend(Celery("other", broker=url), redis_url=url)
    tests.celery_app.longtask.init_app(app, backend=backend)
    with app.app_context():
        if action == "submit":
            print(tests.celery_app.pid_then_wait.submit(arg, 60).id)
        else:
            job = tests.celery_app.longtask.get_job(arg)
            out = {"status": job.status.value}
            if action == "cancel":
                job.cancel()
                out["final"] = job.wait(20).value
            print(json.dumps(out))
    """
)


def _other_process(redis_url: str, action: str, arg: str) -> str:
    env = {**os.environ, "LONGTASK_TEST_REDIS_URL": redis_url}
    done = subprocess.run(
        [sys.executable, "-c", OTHER_PROCESS, redis_url, action, arg],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        cwd=os.path.dirname(os.path.dirname(__file__)),
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.strip().splitlines()[-1]


def test_job_is_read_and_cancelled_by_another_process(app, redis_url, tmp_path):
    from tests.celery_app import pid_then_wait

    pid_file = tmp_path / "pid"
    job = pid_then_wait.submit(str(pid_file), 60)
    wait_for(pid_file.exists, what="the job to start")
    assert _other_process(redis_url, "cancel", job.id) == '{"status": "running", "final": "cancelled"}'
    assert job.status is JobStatus.CANCELLED


def test_job_submitted_by_another_process_is_read_here(app, redis_url, tmp_path):
    from tests.celery_app import longtask

    pid_file = tmp_path / "pid"
    job_id = _other_process(redis_url, "submit", str(pid_file))
    job = longtask.get_job(job_id)
    wait_for(pid_file.exists, what="the job to start")
    job.cancel()
    assert job.wait(timeout=20) is JobStatus.CANCELLED


def test_configured_by_longtask_keys(redis_url):
    app = Flask(__name__)
    app.config.update(LONGTASK_BACKEND="celery")
    with pytest.raises(RuntimeError, match="LONGTASK_CELERY_BROKER_URL"):
        LongTask(app)
    app = Flask(__name__)
    app.config.update(LONGTASK_BACKEND="celery", LONGTASK_CELERY_BROKER_URL=redis_url)
    LongTask(app)
    backend = app.extensions["longtask"].backend
    assert isinstance(backend, CeleryBackend)
    key = f"probe:{uuid.uuid4().hex}"
    backend.set(key, {"ok": b"yes"}, expire=5)
    assert backend.get(key) == {"ok": b"yes"}
    backend.close()


class _Planted:
    """A value whose unpickling creates a file (it could run anything)."""

    def __init__(self, marker) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_pickles_kept_in_redis_are_signed_and_a_forged_one_is_never_unpickled(redis_url, tmp_path):
    import pickle

    def backend_with(**kwargs) -> CeleryBackend:
        return CeleryBackend(celery.Celery("tests.pickles", broker=redis_url), redis_url=redis_url, **kwargs)

    marker = tmp_path / "code-ran"
    ours, other, unkeyed = (
        backend_with(serializer="pickle", secret_key="k1"),
        backend_with(serializer="pickle", secret_key="k2"),
        backend_with(serializer="pickle"),
    )
    try:
        value = {"set": {1, 2}, "obj": dt.date(2026, 12, 2)}
        assert ours.loads(ours.dumps(value)) == value
        with pytest.raises(TamperedValueError, match="signature does not match"):
            ours.loads(pickle.dumps(_Planted(marker)))  # what a writer of Redis without the key can put there
        with pytest.raises(TamperedValueError):
            other.loads(ours.dumps(value))
        with pytest.raises(LongTaskError, match="LONGTASK_SECRET_KEY"):
            unkeyed.dumps(value)
        app = Flask(__name__)
        app.config.update(SECRET_KEY="k1")
        unkeyed.init_app(app)  # (the app's SECRET_KEY, when nothing else is given)
        assert unkeyed.loads(ours.dumps(value)) == value
    finally:
        for backend in (ours, other, unkeyed):
            backend.close()
    assert not marker.exists()


def test_the_worker_command_leaves_the_pools_size_to_celery(redis_url):
    app = Flask(__name__)
    app.config.update(LONGTASK_BACKEND="celery", LONGTASK_CELERY_BROKER_URL=redis_url)
    LongTask(app)
    try:
        result = app.test_cli_runner().invoke(args=["longtask", "worker", "--max-workers", "4"])
        assert result.exit_code != 0 and "celery worker --autoscale=MAX,MIN" in result.output
    finally:
        app.extensions["longtask"].backend.close()


def test_a_worker_waits_for_a_record_sent_with_its_message(redis_url, monkeypatch):
    """Submit sends the job's record and its task message at once; a worker that gets the
    message first waits for the record, and gives up (runs nothing) if it never comes."""
    from flask_longtask.backends import celery as celery_backend

    backend = _clean_backend(redis_url)
    writer = _clean_backend(redis_url)
    try:
        found: list[object] = []
        reader = threading.Thread(
            target=lambda: found.append(backend.claim_and_get(keys.claim("late"), {"by": "w"}, 60, [keys.job("late")]))
        )
        reader.start()
        wait_for(lambda: backend.get(keys.claim("late")) is not MISSING, 10, "the worker's claim")
        writer.set(keys.job("late"), {"id": "late"})
        reader.join(10)
        assert found == [(True, [{"id": "late"}])]

        monkeypatch.setattr(celery_backend, "_RECORD_WAIT", 0.2)
        assert backend.claim_and_get(keys.claim("never"), {"by": "w"}, 60, [keys.job("never")]) == (True, [MISSING])
    finally:
        writer.close()
        backend.close()


def test_a_waiter_is_woken_by_the_end(app, tmp_path, monkeypatch):
    """Job.wait's later looks block on the job's done list (BLMOVE), not on a poll: a look
    returns as soon as the job ends, wherever it ended, with the final status read in the same
    round trip."""
    from flask_longtask.backends import celery as celery_backend
    from tests import celery_app as worker_module

    backend = app.extensions["longtask"].backend
    monkeypatch.setattr(celery_backend, "_RECHECK", 60.0)  # so that only the end can end the look
    gate = tmp_path / "gate"
    job = worker_module.wait_for_file.submit(str(gate))
    wait_for(lambda: job.status is JobStatus.RUNNING, 30, "the job to start")
    values: list[list[object]] = []
    names = [keys.job(job.id)]
    waiter = threading.Thread(target=lambda: values.append(backend.wait(job.id, names, timeout=60, elapsed=1.0)))
    waiter.start()
    gate.touch()
    waiter.join(30)  # a deadline, far below the look's own 60 s
    assert not waiter.is_alive()
    assert values[0][0]["status"] == "succeeded"
    assert job.result(timeout=5) == str(gate)
    # Ended: a later look answers at once too (the end's push stays in the list), until purged.
    assert backend.wait(job.id, names, timeout=60, elapsed=1.0)[0]["status"] == "succeeded"
    assert app.test_cli_runner().invoke(args=["longtask", "purge"]).output == "Purged 1 finished job(s).\n"
    # The done list and the listing entry too (Backend.forget); the metrics' tallies are
    # counters, which a purge leaves as they are.
    assert list(backend.scan("")) == ["tallies"]


def test_a_first_look_reads_at_once(app, tmp_path):
    """Job.wait's first look is a plain read: result(timeout=0) on a running job raises at once."""
    from flask_longtask import JobTimeoutError
    from tests import celery_app as worker_module

    gate = tmp_path / "gate"
    job = worker_module.wait_for_file.submit(str(gate))
    wait_for(lambda: job.status is JobStatus.RUNNING, 30, "the job to start")
    with pytest.raises(JobTimeoutError):
        job.result(timeout=0)
    gate.touch()
    assert job.result(timeout=30) == str(gate)


def test_submit_when_the_broker_is_down_leaves_nothing(redis_url):
    """The record and the message go out together; when the message cannot be sent, the submit
    raises and the records it wrote are removed."""
    from kombu.exceptions import OperationalError

    from tests import celery_app as worker_module

    down = celery.Celery("tests.down", broker="redis://127.0.0.1:1/0")
    down.conf.update(broker_connection_retry=False, broker_connection_max_retries=0, task_publish_retry=False)
    backend = CeleryBackend(down, redis_url=redis_url)
    app = Flask("tests.broker_down")
    worker_module.longtask.init_app(app, backend=backend)
    try:
        with app.app_context():
            before = set(backend.scan(keys.JOB_PREFIX))
            with pytest.raises(OperationalError, match="Connection refused"):
                worker_module.roundtrip.submit(1)
            assert set(backend.scan(keys.JOB_PREFIX)) == before
            assert not [k for k in backend.scan(keys.request(""))]
    finally:
        backend.close()


def test_a_job_at_its_time_limit_sees_its_flag_and_fails_time_limited(app, tmp_path):
    from tests.celery_app import limited_until_cancelled

    job = limited_until_cancelled.submit(str(tmp_path / "pid"))
    assert job.time_limit == 0.5
    assert job.wait(timeout=30) is JobStatus.FAILED
    assert job.error["type"] == "TimeLimitExceeded"
    with pytest.raises(JobFailedError, match="^TimeLimitExceeded"):
        job.result(timeout=0)


def test_a_job_that_ignores_its_time_limit_is_stopped_by_force(app, tmp_path):
    from tests.celery_app import limited_stubborn, roundtrip

    pid_file = tmp_path / "pid"
    job = limited_stubborn.submit(str(pid_file))
    pid = int(wait_for(lambda: pid_file.exists() and pid_file.read_text(), what="the job's pid"))
    assert job.wait(timeout=30) is JobStatus.FAILED
    assert job.error["type"] == "TimeLimitExceeded"
    wait_for(lambda: not os.path.exists(f"/proc/{pid}"), 10, "the job's pool process to be stopped")
    assert roundtrip.submit("still works").result(timeout=30) == "still works"


def test_a_failing_attempt_is_retried_with_celerys_countdown(app, tmp_path):
    from tests.celery_app import flaky

    job = flaky.submit(str(tmp_path / "n"), 2)
    assert job.result(timeout=30) == 3
    assert job.attempt == 3 and job.retries == 2
    worse = flaky.submit(str(tmp_path / "m"), 5)
    with pytest.raises(JobFailedError, match="^ConnectionError: attempt 3 fails"):
        worse.result(timeout=30)


def test_the_celery_worker_that_retries_a_job_sends_job_retrying(app, tmp_path):
    # Sent by the process that queues the retry: a pool process of the Celery worker, to the
    # receivers connected there (tests/celery_app.py connects one that writes to the file the
    # job names).
    from tests.celery_app import flaky

    log = tmp_path / "retrying"
    job = flaky.submit(str(tmp_path / "n"), 2, str(log))
    assert job.result(timeout=30) == 3
    sent = retrying_lines(log)
    assert [(attempt, message) for _, attempt, message in sent] == [(2, "attempt 1 fails"), (3, "attempt 2 fails")]
    assert os.getpid() not in {pid for pid, _, _ in sent}


def test_an_attempt_stopped_by_force_at_its_time_limit_is_retried(app, tmp_path):
    # Stopped by this worker's watchdog (a revoke), then sent again under the same task id,
    # which the worker must not drop as revoked; the watchdog must not stop the next attempt.
    from tests.celery_app import stubborn_once

    job = stubborn_once.submit(str(tmp_path / "n"))
    assert job.result(timeout=30) == 2
    assert job.attempt == 2


def test_a_copy_of_a_retrys_message_does_not_run_it_before_its_time(app, tmp_path):
    """A retry deletes the failed attempt's claim and waits for Celery's countdown. A copy of
    the job's message that comes meanwhile (published again after a Redis restart, or handed out
    again by kombu) is skipped: the second attempt starts when its retry is due, not before."""
    from tests.celery_app import fails_once

    backend = app.extensions["longtask"].backend
    store = app.extensions["longtask"].store
    job = fails_once.submit(str(tmp_path / "n"))
    wait_for(lambda: job.attempt == 2, 30, "the first attempt to fail")
    retry_at = store.read_record(job.id)["retry_at"]
    backend.celery.send_task("flask_longtask.run", args=[job.id], task_id=job.id, ignore_result=True)  # a copy
    assert job.result(timeout=30) == 2
    assert job.started_at is not None and job.started_at.timestamp() >= retry_at


def test_a_pass_publishes_a_job_left_queued_again_then_less_often(redis_url):
    """The watchdog's pass (one of every Celery worker's, here with a clock of its own):
    published again once a job has waited ``after`` seconds unclaimed, by one pass of the
    several that look at the same time, then after as long as it had waited; a retry not
    before it is due; a job once claimed, never. (Its messages go to a queue nobody reads.)"""
    from flask_longtask.backends import _celery_recovery as recovery
    from tests import celery_app as worker_module

    queue = f"nobody-reads-{uuid.uuid4().hex}"
    client = celery.Celery("tests.lost", broker=redis_url)
    client.conf.task_routes = {"flask_longtask.run": {"queue": queue}}
    backend = CeleryBackend(client, redis_url=redis_url)
    app = Flask("tests.requeue_pass")
    worker_module.longtask.init_app(app, backend=backend)
    store = app.extensions["longtask"].store
    try:
        with app.app_context():
            job = worker_module.roundtrip.submit(1)
        since = store.read_record(job.id)["created"]
        sent = lambda: backend.redis.llen(queue)
        assert sent() == 1

        assert recovery.requeue(backend, 1.0, since + 0.9) == []
        assert recovery.requeue(backend, 1.0, since + 1.5) == [job.id]
        assert recovery.requeue(backend, 1.0, since + 1.5) == []  # another worker's pass, at the same time
        assert recovery.requeue(backend, 1.0, since + 2.9) == []  # due again 1.5 s later
        assert recovery.requeue(backend, 1.0, since + 3.1) == [job.id]
        assert sent() == 3

        retry_at = since + 10.0  # queued for a retry, due then
        backend.set(keys.job(job.id), {**store.read_record(job.id), "retry_at": retry_at})
        assert recovery.requeue(backend, 1.0, since + 9.0) == []
        assert recovery.requeue(backend, 1.0, since + 10.9) == []
        assert recovery.requeue(backend, 1.0, since + 11.1) == [job.id]

        assert store.claim(job.id, "a-worker")
        assert recovery.requeue(backend, 1.0, since + 1000.0) == []
        assert backend.redis.zscore(recovery.queued_key(backend.prefix), job.id) is None  # out of the index
        assert sent() == 4
    finally:
        backend.redis.delete(queue)
        for key in list(backend.scan("")):
            backend.delete(key)
        backend.close()


@pytest.mark.parametrize("value", [0, -1, "60", True, float("inf"), float("nan")])
def test_a_bad_requeue_setting_is_refused(redis_url, value):
    app = Flask(__name__)
    app.config.update(LONGTASK_CELERY_REQUEUE_AFTER=value)
    backend = CeleryBackend(celery.Celery("tests.bad", broker=redis_url), redis_url=redis_url)
    with pytest.raises(ValueError, match="LONGTASK_CELERY_REQUEUE_AFTER"):
        LongTask(app, backend=backend)
    backend.close()


def test_the_requeue_setting_of_several_apps(redis_url):
    backend = CeleryBackend(celery.Celery("tests.several", broker=redis_url), redis_url=redis_url)
    assert backend.requeue_after == 60.0
    for after in (None, 30, 45, None):
        app = Flask(__name__)
        app.config.update(LONGTASK_CELERY_REQUEUE_AFTER=after)
        LongTask(app, backend=backend)
    assert backend.requeue_after == 30.0  # the smallest; None only when every app says None
    backend.close()
