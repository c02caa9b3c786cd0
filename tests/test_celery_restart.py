"""CeleryBackend across a clean restart of a real, durable redis-server (its broker and its state),
with a real prefork Celery worker that has messages prefetched and jobs running at the time."""

from __future__ import annotations

import collections
import subprocess
import threading
import typing as t
from pathlib import Path

import pytest
from flask import Flask

from flask_longtask import JobStatus
from flask_longtask.job import Job

from .helpers import wait_for
from .services import restart_redis, start_celery_worker, start_redis, stop, stop_redis, wait_until

celery = pytest.importorskip("celery")
from flask_longtask.backends.celery import CeleryBackend  # noqa: E402

# Its own redis-server and worker: restarting them must not disturb tests/test_celery.py.
pytestmark = pytest.mark.xdist_group("celery-restart")

#: The worker's settings (tests/celery_app.py reads LONGTASK_TEST_CONFIG_*): a job left queued
#: without a claim for a second is published again; a job whose end cannot be written is
#: retried for LONGTASK_HEARTBEAT_TIMEOUT seconds (3) before its worker gives its outcome up.
WORKER_CONFIG = {"LONGTASK_CELERY_REQUEUE_AFTER": "1", "LONGTASK_HEARTBEAT_TIMEOUT": "3"}
PREFETCH = 4  # per pool process: with 2 of them, 8 messages wait in the worker


class Redis:
    """A durable redis-server that a test stops and starts again (same port, same files)."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.proc, self.url = start_redis(tmp, durable=True)

    def down(self) -> None:
        stop_redis(self.proc)

    def up(self) -> None:
        port = int(self.url.rsplit(":", 1)[1].split("/")[0])
        self.proc = start_redis(self.tmp, port=port, durable=True)[0]

    def restart(self) -> None:
        self.proc = restart_redis(self.proc, self.tmp, self.url)


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory) -> t.Iterator[Redis]:
    server = Redis(tmp_path_factory.mktemp("redis"))
    yield server
    if server.proc.poll() is None:
        stop(server.proc)


class Supervised:
    """A Celery worker started again whenever it exits, as a supervisor (systemd's
    ``Restart=always``) would: a worker holding a retry's message (a countdown) exits with
    "Unrecoverable error: AttributeError" when Redis restarts (Celery 5.7, kombu 5.7)."""

    def __init__(self, redis_url: str, log: Path) -> None:
        self.redis_url, self.log = redis_url, log
        self.starts = 0
        self.proc = self._start()
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()

    def _start(self) -> subprocess.Popen[bytes]:
        self.starts += 1
        env = {f"LONGTASK_TEST_CONFIG_{key}": value for key, value in WORKER_CONFIG.items()}
        worker_log = self.log.with_name(f"worker-{self.starts}.log")
        return start_celery_worker(
            "tests.celery_app:celery_app", self.redis_url, worker_log, prefetch=PREFETCH, env=env, name="restart"
        )

    def _watch(self) -> None:
        while not self._stopping.is_set():
            self.proc.wait()
            if not self._stopping.is_set():
                self.proc = self._start()

    def logs(self) -> str:
        files = [self.log.with_name(f"worker-{n}.log") for n in range(1, self.starts + 1)]
        return "".join(f.read_text(errors="replace") for f in files)

    def stop(self) -> None:
        self._stopping.set()
        stop(self.proc)
        self._thread.join(30)
        if self.proc.poll() is None:  # (started again just before it was told to stop)
            stop(self.proc)


@pytest.fixture(scope="module")
def celery_worker(redis_server: Redis, tmp_path_factory) -> t.Iterator[Supervised]:
    worker = Supervised(redis_server.url, tmp_path_factory.mktemp("celery") / "worker.log")
    probe = celery.Celery("probe", broker=redis_server.url)
    try:
        wait_until(lambda: probe.control.ping(timeout=0.5), 60, "the Celery worker to answer ping")
    except RuntimeError:
        worker.stop()
        raise RuntimeError("Celery worker did not start:\n" + worker.logs()[-3000:]) from None
    yield worker
    worker.stop()


@pytest.fixture
def app(redis_server: Redis, celery_worker: Supervised) -> t.Iterator[Flask]:
    from tests import celery_app as worker_module

    app = Flask("tests.celery_restart_client")
    backend = CeleryBackend(celery.Celery("tests.restart_client", broker=redis_server.url), redis_url=redis_server.url)
    worker_module.longtask.init_app(app, backend=backend)
    with app.app_context():
        yield app
    backend.close()


def _held(broker: t.Any, jobs: list[Job[t.Any]]) -> int:
    """How many of the jobs' messages a worker holds, unacknowledged (kombu's "unacked" hash:
    what a Redis restart strands there; earlier tests' stranded messages are other jobs')."""
    return sum(any(job.id.encode() in message for job in jobs) for message in broker.hvals("unacked"))


def _ended(jobs: list[Job[t.Any]]) -> bool:
    return all(job.status in (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED) for job in jobs)


def _log_has(worker: Supervised, text: str, job_id: str) -> bool:
    return any(text in line and job_id in line for line in worker.logs().splitlines())


def test_jobs_prefetched_by_a_worker_run_soon_after_a_redis_restart(app, redis_server, tmp_path):
    """20 jobs: 2 run, 8 wait in the worker (prefetched, unacknowledged), 10 in the broker.
    Redis restarts cleanly. The prefetched messages are stranded in the broker's "unacked" hash
    until kombu's visibility timeout (an hour); the worker's watchdog publishes their jobs again
    a second after they were queued, unclaimed. Every job then runs, each once."""
    from tests.celery_app import note_then_wait

    runs, gate = tmp_path / "runs", tmp_path / "gate"
    jobs = [note_then_wait.submit(str(runs), str(gate)) for _ in range(20)]
    broker = app.extensions["longtask"].backend.redis
    try:
        wait_for(lambda: _held(broker, jobs) == 2 * PREFETCH, 30, "the worker to prefetch 8 messages")
        # (the two it runs hold their messages before they write "running": wait for that too)
        wait_for(lambda: sum(job.status is JobStatus.RUNNING for job in jobs) == 2, 30, "two jobs to run")
        redis_server.restart()
    finally:
        gate.touch()  # (whatever happened: the worker's processes are the next tests' too)
    wait_for(lambda: _ended(jobs), 20, "every job to end after the restart")
    assert [job.status for job in jobs] == [JobStatus.SUCCEEDED] * 20
    assert all(job.result(timeout=0) == str(gate) for job in jobs)
    assert collections.Counter(runs.read_text().split()) == {job.id: 1 for job in jobs}  # each ran once


def test_a_job_that_ends_while_redis_is_down_is_stored_when_it_is_back(app, redis_server, celery_worker, tmp_path):
    """The job returns while Redis is down: its worker tries to write its end again until Redis
    is back (within the heartbeat timeout), and the job succeeds with its result."""
    from tests.celery_app import wait_for_file

    gate = tmp_path / "gate"
    job = wait_for_file.submit(str(gate))
    wait_for(lambda: job.status is JobStatus.RUNNING, 30, "the job to start")
    redis_server.down()
    gate.touch()
    wait_for(lambda: _log_has(celery_worker, "could not write its end", job.id), 30, "the job's end to fail")
    redis_server.up()
    assert job.wait(timeout=20) is JobStatus.SUCCEEDED
    assert job.result(timeout=0) == str(gate)


def test_a_job_whose_end_could_not_be_written_says_so(app, redis_server, celery_worker, tmp_path):
    """Redis stays down past the worker's patience (the heartbeat timeout, 3 s here): the
    worker gives the job's outcome up, and once Redis is back the job ends failed saying that
    its outcome could not be stored, not that its worker was lost."""
    from tests.celery_app import wait_for_file

    gate = tmp_path / "gate"
    job = wait_for_file.submit(str(gate))
    wait_for(lambda: job.status is JobStatus.RUNNING, 30, "the job to start")
    redis_server.down()
    gate.touch()
    wait_for(lambda: _log_has(celery_worker, "gives its outcome up", job.id), 30, "the worker to give up")
    redis_server.up()
    assert job.wait(timeout=20) is JobStatus.FAILED
    assert job.error["type"] == "OutcomeNotStoredError"
    assert "could not be stored" in job.error["message"]
    assert "ConnectionError" in job.error["message"]


def test_a_retry_waiting_for_its_countdown_runs_at_its_time_after_a_redis_restart(app, redis_server, tmp_path):
    """A retry's message waits in the worker for its countdown (unacknowledged); Redis restarts
    and the message is stranded. The job is published again once its countdown is over, not
    before, and its second attempt runs."""
    from tests.celery_app import fails_once

    job = fails_once.submit(str(tmp_path / "n"))
    store = app.extensions["longtask"].store
    broker = app.extensions["longtask"].backend.redis
    wait_for(lambda: job.attempt == 2 and _held(broker, [job]) == 1, 30, "the retry's message in the worker")
    retry_at = store.read_record(job.id)["retry_at"]

    redis_server.restart()
    assert job.result(timeout=20) == 2
    assert job.attempt == 2
    assert job.started_at is not None and job.started_at.timestamp() >= retry_at


def test_a_job_whose_message_was_lost_runs(app, redis_server, tmp_path):
    """A message that never reaches a worker (here: sent to a queue nobody reads) is published
    again by the worker's watchdog; the malformed entries that anything writing to Redis could
    put in the index of queued jobs are dropped, and do not stop it."""
    from flask_longtask.store import keys
    from tests.celery_app import longtask, note_then_wait

    backend = app.extensions["longtask"].backend
    index = backend.prefix + "queued"  # the index of queued jobs (docs/internals.md)
    garbage = {b"not-a-job": 0, b"x" * 10_000: 0, b"ab" * 16: 0, b"cd" * 16: 0, b"ef" * 16: 0, b"12" * 16: "-inf"}
    backend.redis.zadd(index, garbage)
    backend.redis.set(backend.prefix + keys.job("cd" * 16), b"\x80 not a record")
    backend.redis.set(backend.prefix + keys.job("ef" * 16), b"[1, 2]")

    lost = celery.Celery("tests.lost_messages", broker=redis_server.url)
    lost.conf.task_routes = {"flask_longtask.run": {"queue": "nobody-reads-this"}}
    other = Flask("tests.lost_messages")
    lost_backend = CeleryBackend(lost, redis_url=redis_server.url)
    longtask.init_app(other, backend=lost_backend)
    runs, gate = tmp_path / "runs", tmp_path / "gate"
    gate.touch()
    try:
        with other.app_context():
            job = note_then_wait.submit(str(runs), str(gate))
        assert backend.redis.llen("nobody-reads-this") == 1
        assert longtask.get_job(job.id).result(timeout=20) == str(gate)
    finally:
        backend.redis.delete("nobody-reads-this")
        lost_backend.close()
    assert runs.read_text().split() == [job.id]
    assert [backend.redis.zscore(index, member) for member in garbage] == [None] * len(garbage)
    assert backend.redis.get(backend.prefix + keys.job("cd" * 16)) == b"\x80 not a record"  # (not ours to delete)
