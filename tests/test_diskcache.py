"""DiskcacheBackend reliability, with real worker processes (see issue 3).

The multi-process tests (gunicorn, ``flask longtask worker``) are in ``test_diskcache_procs.py``.
"""

from __future__ import annotations

import http.client
import os
import signal
import sqlite3
import threading
import time
import typing as t
from pathlib import Path

import pytest
from flask import Flask
from werkzeug.serving import make_server

from flask_longtask import JobStatus
from flask_longtask.backends import backend_class
from flask_longtask.backends.diskcache import DiskcacheBackend, handoff, wire
from flask_longtask.backends.diskcache.host import PoolHost
from flask_longtask.backends.diskcache.workers import WorkerView
from flask_longtask.exceptions import JobFailedError
from flask_longtask.store import keys
from tests import diskcache_jobs as jobs
from tests.helpers import wait_for

GRACE = 0.2


def exists(pid: int) -> bool:
    """Whether ``pid`` exists at all, zombies included."""
    return os.path.exists(f"/proc/{pid}")


def workers_of(backend: DiskcacheBackend) -> list[WorkerView]:
    """The worker processes of the pool ``backend`` hosts in this process, as it sees them now."""
    workers = backend.pool_workers()
    assert workers is not None, "this process hosts no pool"
    return workers


def host_pids(backend: DiskcacheBackend) -> list[int]:
    """The pids of the pool's worker processes, if this process hosts it (else none)."""
    return [worker.pid for worker in backend.pool_workers() or []]


def ahead_of(backend: DiskcacheBackend) -> list[str]:
    """The jobs sent ahead to the pool's workers, worker by worker, in order."""
    return [job_id for worker in workers_of(backend) for job_id in worker.ahead]


def make_app(backend: DiskcacheBackend, **config: t.Any) -> Flask:
    app = Flask("tests.test_diskcache")
    app.config.update(TESTING=True, LONGTASK_CANCEL_GRACE=GRACE, LONGTASK_PROGRESS_INTERVAL=0.01, **config)
    jobs.longtask.init_app(app, backend=backend)
    return app


@pytest.fixture
def backend(tmp_path: Path) -> t.Iterator[DiskcacheBackend]:
    backend = DiskcacheBackend(tmp_path / "lt", workers=2, max_workers=2)
    yield backend
    pids = host_pids(backend)
    backend.close()
    assert [pid for pid in pids if exists(pid)] == [], "worker processes outlived the pool"


@pytest.fixture
def app(backend: DiskcacheBackend) -> t.Iterator[Flask]:
    app = make_app(backend)
    with app.app_context():
        yield app


def test_is_the_diskcache_backend_name() -> None:
    assert backend_class("diskcache") is DiskcacheBackend


def test_jobs_run_in_a_persistent_pool(app: Flask, backend: DiskcacheBackend) -> None:
    seen = [jobs.whoami.submit().result(timeout=30) for _ in range(10)]
    assert backend.is_pool_host
    assert {s["pid"] for s in seen} <= set(host_pids(backend))
    assert os.getpid() not in {s["pid"] for s in seen}
    # Reused, not one process per job: at most the pool's size ever started.
    assert len({s["pid"] for s in seen}) <= 2
    assert len(host_pids(backend)) == 2


def test_jobs_start_in_fifo_order(tmp_path: Path) -> None:
    backend = DiskcacheBackend(tmp_path / "lt", workers=1, max_workers=1)
    try:
        with make_app(backend).app_context():
            log = tmp_path / "log"
            submitted = [jobs.record.submit(str(log), n) for n in range(20)]
            assert [j.result(timeout=30) for j in submitted] == [2 * n for n in range(20)]
        starts = [int(line.split()[1]) for line in log.read_text().splitlines() if line.startswith("start")]
        assert starts == list(range(20))
    finally:
        backend.close()


def test_hard_cancel_ends_the_process_and_keeps_the_pool_size(
    app: Flask, backend: DiskcacheBackend, tmp_path: Path
) -> None:
    pid_file = tmp_path / "pid"
    job = jobs.stubborn.submit(str(pid_file))
    pid = int(wait_for(lambda: pid_file.exists() and pid_file.read_text(), 30, "the job to start"))
    assert job.status is JobStatus.RUNNING
    started = time.monotonic()
    job.cancel()
    wait_for(lambda: job.status is JobStatus.CANCELLED, GRACE + 1.0, "the job to be cancelled")
    assert time.monotonic() - started < GRACE + 1.0
    wait_for(lambda: not exists(pid), 2, "the job's process to be gone (no zombie)")
    wait_for(lambda: len(workers_of(backend)) == 2, 10, "the pool to replace its worker")
    assert pid not in host_pids(backend)
    assert jobs.add.submit(1, 2).result(timeout=30) == 3


@pytest.mark.parametrize(
    ("task", "arg", "how"),
    [
        (jobs.exit_now, 3, "exited with code 3"),
        (jobs.kill_self, int(signal.SIGKILL), "killed by SIGKILL"),
        (jobs.kill_self, int(signal.SIGSEGV), "killed by SIGSEGV"),
    ],
)
def test_crashed_worker_fails_its_job_and_is_replaced(
    app: Flask, backend: DiskcacheBackend, task: t.Any, arg: int, how: str
) -> None:
    assert jobs.noop.submit().result(timeout=30) is None  # the pool is up
    job = task.submit(arg)
    started = time.monotonic()
    wait_for(lambda: job.status is JobStatus.FAILED, 5, "the crashed job to fail")
    assert time.monotonic() - started < 2.0
    assert job.error is not None
    assert job.error["type"] == "WorkerLostError"
    assert how in job.error["message"]
    with pytest.raises(JobFailedError, match="worker running this job died"):
        job.result(timeout=1)
    assert [jobs.add.submit(n, 1).result(timeout=30) for n in range(4)] == [1, 2, 3, 4]
    assert len(workers_of(backend)) == 2


@pytest.fixture
def one_worker_pool(tmp_path: Path) -> t.Iterator[DiskcacheBackend]:
    """A backend hosting a pool of one worker, up, in an app context."""
    backend = DiskcacheBackend(tmp_path / "lt1", workers=1, max_workers=1)
    try:
        with make_app(backend).app_context():
            assert jobs.noop.submit().result(timeout=30) is None  # the pool is up
            yield backend
    finally:
        pids = host_pids(backend)
        backend.close()
        assert [pid for pid in pids if exists(pid)] == [], "worker processes outlived the pool"


def the_worker(backend: DiskcacheBackend) -> WorkerView:
    """The one worker of a one-worker pool, as the pool sees it now."""
    [worker] = workers_of(backend)
    return worker


def idle_worker(backend: DiskcacheBackend) -> WorkerView:
    """The one worker of a pool, once the pool has heard that it is free (a job's result can be
    read before that)."""

    def idle() -> WorkerView | None:
        worker = the_worker(backend)
        return worker if worker.job_id is None else None

    return t.cast(WorkerView, wait_for(idle, 10, "the worker to be idle"))


def spy(monkeypatch: pytest.MonkeyPatch, owner: t.Any, name: str, what: t.Callable[..., t.Any]) -> list[t.Any]:
    """Record ``what(*args)`` of each call of ``owner.name`` (unless ``None``): a function of a
    module of the pool, or a method of a class (``what`` then gets the instance first)."""
    calls: list[t.Any] = []
    method = getattr(owner, name)

    def spied(*args: t.Any, **kwargs: t.Any) -> t.Any:
        if (item := what(*args, **kwargs)) is not None:
            calls.append(item)
        return method(*args, **kwargs)

    monkeypatch.setattr(owner, name, spied)
    return calls


def test_jobs_sent_ahead_behind_a_long_job_run_on_a_free_worker_in_order(
    app: Flask, backend: DiskcacheBackend, tmp_path: Path
) -> None:
    # Both workers busy: the pool sends each its next queued jobs ahead of its end; each, its
    # own job running long, gives them back.
    gate_a, gate_b = tmp_path / "a", tmp_path / "b"
    long_a = jobs.wait_for_file.submit(str(gate_a))
    long_b = jobs.wait_for_file.submit(str(gate_b))
    wait_for(lambda: long_a.status is long_b.status is JobStatus.RUNNING, 30, "both long jobs to run")
    log = tmp_path / "log"
    short = [jobs.record.submit(str(log), n) for n in range(4)]
    wait_for(lambda: all(w.gave_back for w in workers_of(backend)), 10, "both workers to give jobs back")
    # Sent ahead, given back or queued: they are counted as waiting.
    wait_for(lambda: backend.queue_length() == 4, 10, "the jobs to be counted as waiting")
    # One long job ends: its worker runs every short job, those sent ahead to the worker whose
    # job still runs included, while that job runs on; in the order they were submitted.
    gate_b.touch()
    assert [job.result(timeout=10) for job in short] == [0, 2, 4, 6]
    assert [line.split()[1] for line in log.read_text().splitlines() if line.startswith("start")] == list("0123")
    assert long_a.status is JobStatus.RUNNING
    gate_a.touch()
    assert long_a.result(timeout=10) == "done"
    assert ahead_of(backend) == [] and backend.queue_length() == 0


def test_a_job_sent_ahead_when_the_pool_shuts_down_runs_on_the_next_host(tmp_path: Path) -> None:
    # The pool closes while a job waits in a busy worker's pipe: the job it ran fails "worker
    # lost"; the one sent ahead never started, so it stays queued, unclaimed, for the next host.
    first = DiskcacheBackend(tmp_path / "lt", workers=1, max_workers=1)
    try:
        with make_app(first).app_context():
            holder = jobs.hold_jobs_ahead.submit(1, str(tmp_path / "never"))
            # (Running, that is claimed: a job handed to a worker still starting is unclaimed,
            # and would run again on the next host, ahead of the other.)
            wait_for(lambda: holder.status is JobStatus.RUNNING, 30, "the first job to start")
            ahead = jobs.add.submit(20, 22)
            wait_for(lambda: ahead_of(first) == [ahead.id], 30, "the job to be sent ahead")
    finally:
        first.close()
    second = DiskcacheBackend(tmp_path / "lt", workers=1, max_workers=1)
    try:
        with make_app(second).app_context():
            assert jobs.longtask.get_job(ahead.id).result(timeout=30) == 42
            lost = jobs.longtask.get_job(holder.id)
            assert lost.status is JobStatus.FAILED and lost.error is not None
            assert "shut down" in lost.error["message"]
    finally:
        second.close()


def test_a_job_sent_ahead_and_cancelled_does_not_run(one_worker_pool: DiskcacheBackend, tmp_path: Path) -> None:
    backend = one_worker_pool
    gate = tmp_path / "gate"
    holder = jobs.hold_jobs_ahead.submit(1, str(gate))
    ahead = jobs.record.submit(str(tmp_path / "log"), 1)
    wait_for(lambda: ahead_of(backend) == [ahead.id], 30, "the job to be sent ahead")
    ahead.cancel()
    assert ahead.status is JobStatus.CANCELLED  # at once: it had not started
    gate.touch()
    assert holder.result(timeout=30) == 1
    # Its worker tried to claim it as the holder ended, found it cancelled, and went on.
    assert jobs.add.submit(2, 2).result(timeout=30) == 4
    assert ahead.status is JobStatus.CANCELLED
    assert not (tmp_path / "log").exists()  # it never ran
    assert ahead_of(backend) == [] and backend.queue_length() == 0


def test_two_jobs_sent_ahead_the_first_cancelled(one_worker_pool: DiskcacheBackend, tmp_path: Path) -> None:
    # The worker, ending its job, finds the first job sent ahead cancelled; it goes on to the
    # second, and the pool follows it: the next job is not handed to it while it runs that.
    backend = one_worker_pool
    gate, gate_2, log = tmp_path / "gate", tmp_path / "gate-2", tmp_path / "log"
    holder = jobs.hold_jobs_ahead.submit(2, str(gate))
    first = jobs.record.submit(str(log), 1)
    second = jobs.wait_for_file.submit(str(gate_2), then=4)
    wait_for(lambda: ahead_of(backend) == [first.id, second.id], 30, "both jobs to be sent ahead")
    first.cancel()
    gate.touch()
    assert holder.result(timeout=30) == 2
    wait_for(lambda: second.status is JobStatus.RUNNING, 10, "the second job to run")
    assert the_worker(backend).job_id == second.id
    after = jobs.add.submit(3, 3)  # queued behind it, not handed to its busy worker
    gate_2.touch()
    assert after.result(timeout=30) == 6
    assert second.result(timeout=1) == 4
    assert first.status is JobStatus.CANCELLED
    assert not log.exists()  # it never ran
    idle_worker(backend)
    assert ahead_of(backend) == [] and backend.queue_length() == 0


def test_a_job_whose_records_could_not_be_stored_leaves_the_pool_consistent(
    one_worker_pool: DiskcacheBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A job submitted in the host is handed to its idle worker while its records are written;
    # the write fails, so the worker is told to drop it. A job queued at that moment is not sent
    # ahead of that word to the worker (it would run with the pool unaware): it runs next.
    backend = one_worker_pool
    idle_worker(backend)
    write_all, go = backend.table.write_all, handoff.go
    queued: list[t.Any] = []

    def failing_write_all(writes: t.Any, *, locked: t.Any = None, **more: t.Any) -> None:
        monkeypatch.setattr(backend.table, "write_all", write_all)
        if locked is not None:
            locked()  # the worker has the job
        raise OSError(28, "No space left on device")

    def go_then_submit(pool: PoolHost, worker: t.Any, start: bool) -> bool:
        answer = go(pool, worker, start)
        queued.append(jobs.add.submit(5, 5))  # another thread's submit, right then
        return answer

    monkeypatch.setattr(backend.table, "write_all", failing_write_all)
    monkeypatch.setattr(handoff, "go", go_then_submit)
    with pytest.raises(OSError, match="No space left"):
        jobs.add.submit(1, 1)
    monkeypatch.setattr(handoff, "go", go)
    assert queued[0].result(timeout=30) == 10
    idle_worker(backend)
    assert ahead_of(backend) == []
    assert jobs.add.submit(2, 2).result(timeout=30) == 4


@pytest.mark.parametrize("teardown", [False, True], ids=["end-receiver", "teardown"])
def test_a_job_sent_ahead_is_not_claimed_before_slow_end_receivers(
    one_worker_pool: DiskcacheBackend, tmp_path: Path, teardown: bool
) -> None:
    # A receiver of the end signal (or the app's teardown) holds the worker after its job's
    # end: the job sent ahead is given back, not claimed with the end (it would read "running"
    # with no heartbeat, wait for the receiver, and could be found lost meanwhile).
    backend = one_worker_pool
    release = tmp_path / "release"
    try:
        reporting = jobs.slow_to_report.submit(str(release), 1, teardown)
        ahead = jobs.add.submit(1, 1)
        assert reporting.result(timeout=30) == str(release)  # while its receiver holds the worker

        def given_back() -> bool:
            worker = the_worker(backend)
            return worker.gave_back and not worker.ahead

        wait_for(given_back, 10, "the job to be given back")
        assert ahead.status is JobStatus.QUEUED
        assert backend.queue_length() == 1
    finally:
        release.touch()
    assert ahead.result(timeout=30) == 2


def test_a_reserved_worker_is_not_reserved_again_before_its_go(
    one_worker_pool: DiskcacheBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A submit in the host hands its job to the idle worker, then says "go". Its job can end,
    # and the worker be idle again, before that submit has finished with it: another submit
    # must not take it then (the first would mark it free while the second's "go" is not yet
    # sent, and a job sent ahead would be read by the worker as that "go").
    backend = one_worker_pool
    idle_worker(backend)
    go = handoff.go
    reserved: list[t.Any] = []

    def go_then_submit(pool: PoolHost, worker: t.Any, start: bool) -> bool:
        send = worker.conn.send_bytes

        def send_then_submit(data: bytes) -> None:
            send(data)
            if data == wire.Go(True).encode():  # the first submit's go is sent; it has not returned yet
                monkeypatch.setattr(worker.conn, "send_bytes", send)
                wait_for(lambda: the_worker(backend).job_id is None, 10, "the first job to end")
                reserved.append(handoff.reserve(pool, "0" * 32))  # a second submit, right then

        monkeypatch.setattr(worker.conn, "send_bytes", send_then_submit)
        return go(pool, worker, start)

    monkeypatch.setattr(handoff, "go", go_then_submit)
    first = jobs.add.submit(1, 1)
    monkeypatch.setattr(handoff, "go", go)
    assert first.result(timeout=30) == 2
    assert reserved == [None]  # it went through the queue
    assert [jobs.add.submit(n, n).result(timeout=30) for n in range(3)] == [0, 2, 4]


def test_a_waiter_hands_a_dead_workers_pipe_back_to_the_pool(
    one_worker_pool: DiskcacheBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A thread of the host waiting for a job reads its worker's pipe itself. When the worker
    # dies, the pipe is at end-of-file: the waiter leaves it to the dispatcher, which reaps the
    # worker and wakes it, rather than reading it again and again meanwhile.
    # (only a waiter reads with check=False)
    reads = spy(monkeypatch, PoolHost, "read_messages", lambda pool, worker, check=True, want=None: not check or None)
    job = jobs.hold_jobs_ahead.submit(0, None, 3)  # ends its process at once
    assert job.wait(timeout=30) is JobStatus.FAILED
    assert len(reads) <= 1


def test_jobs_sent_ahead_to_a_worker_that_dies_run_on_its_replacement(one_worker_pool: DiskcacheBackend) -> None:
    dying = jobs.hold_jobs_ahead.submit(2, None, 3)
    ahead = [jobs.add.submit(n, 1) for n in range(2)]
    assert dying.wait(timeout=30) is JobStatus.FAILED
    assert dying.error is not None and "exited with code 3" in dying.error["message"]
    assert [job.result(timeout=30) for job in ahead] == [1, 2]


def test_a_job_claimed_ahead_by_a_worker_that_dies_before_running_it_still_runs(
    one_worker_pool: DiskcacheBackend, tmp_path: Path
) -> None:
    # The worker ends its job, claiming the first job sent ahead in the same transaction, then
    # dies before it runs or reports that job: it never started, so it runs on the
    # replacement, as does the second.
    report = tmp_path / "report"
    ending = jobs.exit_after_its_end.submit(2, str(report))
    ahead = [jobs.add.submit(n, 1) for n in range(2)]
    assert ending.result(timeout=30) == 2
    assert [job.result(timeout=30) for job in ahead] == [1, 2]
    assert [job.status for job in ahead] == [JobStatus.SUCCEEDED] * 2
    assert report.read_text() == f"{ahead[0].id} True"  # it had claimed the first


def test_a_worker_whose_job_ends_cancelled_gives_back_the_jobs_sent_ahead(
    one_worker_pool: DiskcacheBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The pool may stop that worker by force any moment (the job ignored its cancellation):
    # it must not be running a job sent ahead then, so it claims none with the end.
    backend = one_worker_pool
    decode = wire.decode_from_worker
    messages = spy(monkeypatch, wire, "decode_from_worker", decode)  # every message the host reads
    # It returns as if it had not seen its cancellation (it was seen: it ends "cancelled").
    holder = jobs.hold_jobs_ahead.submit(1, until_cancelled=True)
    ahead = jobs.add.submit(1, 1)
    wait_for(lambda: ahead_of(backend) == [ahead.id], 30, "the job to be sent ahead")
    holder.cancel()
    assert holder.wait(timeout=30) is JobStatus.CANCELLED
    assert ahead.result(timeout=30) == 2
    gave_back, done = [
        message
        for message in messages
        if (isinstance(message, wire.GiveBack) and ahead.id in message.job_ids)
        or (isinstance(message, wire.Done) and message.job_id == holder.id)
    ]
    assert gave_back == wire.GiveBack((ahead.id,))  # given back before the end was reported,
    assert isinstance(done, wire.Done) and done.ahead is None  # which claimed nothing


def test_load_1000_jobs_from_4_threads(app: Flask, backend: DiskcacheBackend, tmp_path: Path) -> None:
    log = tmp_path / "log"
    submitted: dict[int, t.Any] = {}

    def submit_range(start: int) -> None:
        with app.app_context():
            for n in range(start, 1000, 4):
                submitted[n] = jobs.record.submit(str(log), n)

    threads = [threading.Thread(target=submit_range, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(submitted) == list(range(1000))
    assert {n: submitted[n].result(timeout=60) for n in submitted} == {n: 2 * n for n in range(1000)}

    events = [line.split() for line in log.read_text().splitlines()]
    starts = sorted(int(e[1]) for e in events if e[0] == "start")
    assert starts == list(range(1000)), "every job ran exactly once"
    assert len({e[2] for e in events}) <= 2
    assert len(host_pids(backend)) == 2, "no worker was added beyond the pool's size"
    assert {int(e[2]) for e in events} <= set(host_pids(backend)), "no worker was replaced"
    running, peak = 0, 0
    for e in sorted(events, key=lambda e: (float(e[3]), e[0] == "start")):
        running += 1 if e[0] == "start" else -1
        peak = max(peak, running)
    assert peak <= 2


def test_no_fork_deadlocks_2000_jobs_from_16_server_threads(app: Flask, backend: DiskcacheBackend) -> None:
    # The workers start (and one is replaced, after a crash) while 16 request threads of a
    # threaded server hammer the same SQLite database: none may inherit a held lock.
    server_app = Flask("tests.threaded")
    server_app.config["LONGTASK_CANCEL_GRACE"] = GRACE
    jobs.longtask.init_app(server_app, backend=backend)

    @server_app.post("/submit")
    def submit() -> str:
        return jobs.noop.submit().id

    @server_app.post("/crash")
    def crash() -> str:
        return jobs.exit_now.submit(7).id

    server = make_server("127.0.0.1", 0, server_app, threaded=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    ids: list[str] = []
    crashed: list[str] = []

    def client(i: int) -> None:
        for n in range(125):
            conn = http.client.HTTPConnection("127.0.0.1", server.server_port, timeout=30)
            path = "/crash" if (i, n) == (3, 60) else "/submit"
            conn.request("POST", path)
            job_id = conn.getresponse().read().decode()
            conn.close()
            (crashed if path == "/crash" else ids).append(job_id)

    try:
        clients = [threading.Thread(target=client, args=(i,)) for i in range(16)]
        for c in clients:
            c.start()
        for c in clients:
            c.join()
        assert len(ids) + len(crashed) == 2000
        with server_app.app_context():
            handles = [jobs.longtask.get_job(i) for i in ids]
            for job in handles:
                assert job.wait(timeout=60) is JobStatus.SUCCEEDED
            assert jobs.longtask.get_job(crashed[0]).wait(timeout=10) is JobStatus.FAILED
    finally:
        server.shutdown()
        server.server_close()


def test_bad_argument_in_worker_fails_the_job_not_the_pool(app: Flask) -> None:
    job = jobs.echo.submit(jobs.Poison())
    assert job.wait(timeout=30) is JobStatus.FAILED
    assert "could not be deserialised" in t.cast(dict, job.error)["message"]
    assert jobs.add.submit(2, 2).result(timeout=30) == 4


def test_unpicklable_result_fails_the_job_not_the_pool(app: Flask) -> None:
    job = jobs.unpicklable_result.submit()
    assert job.wait(timeout=30) is JobStatus.FAILED
    assert "could not be serialised" in t.cast(dict, job.error)["message"]
    assert jobs.add.submit(2, 3).result(timeout=30) == 5


def test_full_disk_in_a_worker_fails_the_job_clearly_not_the_pool(app: Flask, backend: DiskcacheBackend) -> None:
    job = jobs.fill_disk.submit()
    assert job.wait(timeout=30) is JobStatus.FAILED
    error = t.cast(dict, job.error)
    assert error["type"] == "WorkerLostError"
    assert "could not store the job's outcome" in error["message"]
    assert jobs.add.submit(3, 4).result(timeout=30) == 7
    assert len(workers_of(backend)) == 2


def test_closures_travel_as_arguments(app: Flask) -> None:
    factor = 3
    assert jobs.echo.submit(lambda x: x * factor).result(timeout=30)(2) == 6


def test_missing_directory_is_created(tmp_path: Path) -> None:
    backend = DiskcacheBackend(tmp_path / "not" / "there" / "yet", workers=1, max_workers=1)
    try:
        with make_app(backend).app_context():
            assert jobs.add.submit(1, 1).result(timeout=30) == 2
    finally:
        backend.close()


def test_corrupted_directory_is_a_clear_error(tmp_path: Path) -> None:
    directory = tmp_path / "lt"
    directory.mkdir()
    (directory / "cache.db").write_bytes(b"this is not an SQLite database" * 100)
    backend = DiskcacheBackend(directory, workers=1, max_workers=1)
    try:
        with pytest.raises(RuntimeError, match="cannot open its directory") as info:
            backend.get(keys.job("x"))
        assert str(directory) in str(info.value)
        assert isinstance(info.value.__cause__, sqlite3.DatabaseError)
    finally:
        backend.close()


def test_expired_entries_are_swept(tmp_path: Path) -> None:
    backend = DiskcacheBackend(tmp_path / "lt", workers=1, max_workers=1, cleanup_interval=0.1)
    try:
        for n in range(200):
            backend.set(f"progress:{n}", b"x" * 100, expire=0.2)
        backend.set("keep", 1)
        rows = backend.table.count
        assert rows() == 201
        wait_for(lambda: rows() == 1, 10, "the pool host to sweep expired rows")
    finally:
        backend.close()


def test_another_process_takes_over_when_the_host_closes(tmp_path: Path) -> None:
    # Two backends on one directory behave like two web processes: separate flocks.
    first = DiskcacheBackend(tmp_path / "lt", workers=1, max_workers=1)
    second = DiskcacheBackend(tmp_path / "lt", workers=1, max_workers=1)
    try:
        app1, app2 = make_app(first), make_app(second)
        with app1.app_context():
            assert jobs.add.submit(1, 2).result(timeout=30) == 3
        with app2.app_context():
            second.get("anything")  # joins the election: stands by
            assert first.is_pool_host and not second.is_pool_host
            pids = host_pids(first)
            first.close()
            assert not any(exists(p) for p in pids)
            waiting = [jobs.add.submit(n, 0) for n in range(5)]
            wait_for(lambda: second.is_pool_host, 5, "the standby to take over")
            assert [j.result(timeout=30) for j in waiting] == list(range(5))
    finally:
        second.close()
        first.close()


def test_cli_jobs_cancel_purge(app: Flask, tmp_path: Path) -> None:
    done = jobs.add.submit(20, 22)
    assert done.result(timeout=30) == 42
    pid_file = tmp_path / "pid"
    running = jobs.stubborn.submit(str(pid_file))
    wait_for(lambda: pid_file.exists() and pid_file.read_text(), 30, "the job to start")
    runner = app.test_cli_runner()

    out = runner.invoke(args=["longtask", "jobs"])
    assert out.exit_code == 0, out.output
    assert done.id in out.output and running.id in out.output and "succeeded" in out.output

    out = runner.invoke(args=["longtask", "cancel", running.id])
    assert out.exit_code == 0, out.output
    wait_for(lambda: running.status is JobStatus.CANCELLED, GRACE + 2, "the CLI cancel to end the job")
    out = runner.invoke(args=["longtask", "cancel", "nope"])
    assert out.exit_code != 0 and "No job 'nope'" in out.output

    out = runner.invoke(args=["longtask", "purge"])
    assert out.exit_code == 0 and "Purged 2" in out.output, out.output
    assert list(t.cast(DiskcacheBackend, jobs.longtask.backend).scan(keys.JOB_PREFIX)) == []
    out = runner.invoke(args=["longtask", "jobs", "--status", "running"])
    assert "No jobs." in out.output


def test_queue_length_is_seen_by_every_process(tmp_path: Path) -> None:
    host = DiskcacheBackend(tmp_path / "lt", workers=1, max_workers=1)
    other = DiskcacheBackend(tmp_path / "lt", embedded=False)
    try:
        assert other.queue_length() is None  # nobody hosts the pool yet
        with make_app(host).app_context():
            pid_file = tmp_path / "pid"
            blocker = jobs.stubborn.submit(str(pid_file))
            wait_for(lambda: pid_file.exists() and pid_file.read_text(), 30, "the job to start")
            waiting = [jobs.add.submit(n, 0) for n in range(3)]
            wait_for(lambda: host.queue_length() == 3, 5, "the host to count 3 queued jobs")
            wait_for(lambda: other.queue_length() == 3, 5, "another process to read the count")
            blocker.cancel()
            assert [j.result(timeout=30) for j in waiting] == [0, 1, 2]
            wait_for(lambda: other.queue_length() == 0, 5, "the count to drop to 0")
        host.close()
        assert other.queue_length() is None
    finally:
        host.close()
        other.close()
