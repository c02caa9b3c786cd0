"""Coroutine jobs on the pool and ThreadBackend: how many run at once, where, and what a loop
that a coroutine blocks does to its neighbours. (What every backend does with them -- results,
progress, the app context, errors, memoization, cancel, time limits, retries, contexts -- is in
the conformance suite, flask_longtask/testing_async.py, run on all three backends.)"""

from __future__ import annotations

import os
import signal
import threading
import time
import typing as t
from pathlib import Path

import pytest
from flask import Flask

from flask_longtask import JobStatus
from flask_longtask.backends import ThreadBackend
from flask_longtask.backends.diskcache import DiskcacheBackend

from . import async_jobs as jobs
from . import diskcache_jobs
from .helpers import alive, wait_for
from .services import start_celery_worker, start_redis, stop, wait_until
from .test_diskcache_procs import cli_host
from .test_diskcache_procs import stop as stop_process

TIMEOUT = 30.0
#: 50 coroutine jobs of 0.5 s. One after another they take 25 s, and 12.5 s on two processes:
#: under 5 s, they ran at once (a loaded 2-core machine adds seconds, not tens of them).
MANY, NAP, AT_ONCE = 50, 0.5, 5.0


def make_app(backend: t.Any, name: str = "tests.test_async") -> Flask:
    app = Flask(name)
    app.config.update(LONGTASK_HEARTBEAT_TIMEOUT=2.0, LONGTASK_PROGRESS_INTERVAL=0.01, LONGTASK_CANCEL_GRACE=0.5)
    jobs.longtask.init_app(app, backend=backend)
    return app


@pytest.fixture
def pool(tmp_path: Path) -> t.Iterator[DiskcacheBackend]:
    backend = DiskcacheBackend(tmp_path / "lt", workers=1, max_workers=1)
    yield backend
    backend.close()


def loop_workers(backend: DiskcacheBackend) -> list[t.Any]:
    """The pool's workers that run coroutine jobs now."""
    return [view for view in backend.pool_workers() or [] if view.coroutines]


def test_fifty_coroutine_jobs_on_one_pool_worker_take_about_one_jobs_time(pool: DiskcacheBackend) -> None:
    with make_app(pool).app_context():
        first = jobs.nap.submit(0).result(timeout=TIMEOUT)  # (the worker's start is not the jobs' time)
        began = time.monotonic()
        many = [jobs.nap.submit(NAP) for _ in range(MANY)]
        pids = {job.result(timeout=TIMEOUT) for job in many}
        took = time.monotonic() - began
        assert pids == {first}  # one worker process ran them all
        assert took < AT_ONCE, took
        assert len(pool.pool_workers() or []) == 1  # and the pool started no other


def test_the_pool_grows_for_coroutine_jobs_only_when_every_loop_is_full(tmp_path: Path) -> None:
    backend = DiskcacheBackend(tmp_path / "lt", workers=1, max_workers=4, async_concurrency=4)
    gate = tmp_path / "gate"
    try:
        with make_app(backend).app_context():
            waiting = [jobs.wait_gate.submit(str(gate)) for _ in range(10)]
            loops = wait_for(
                lambda: (
                    sorted(len(view.coroutines) for view in loop_workers(backend)) == [2, 4, 4]
                    and loop_workers(backend)
                ),
                what="10 coroutine jobs on 3 workers of 4 slots",
            )
            # A sync job still takes a worker of its own, beside them.
            assert jobs.sync_pid.submit().result(timeout=TIMEOUT) not in {view.pid for view in loops}
            gate.touch()
            assert {job.result(timeout=TIMEOUT) for job in waiting} == {view.pid for view in loops}
    finally:
        backend.close()


def test_workers_of_both_kinds_count_against_one_ceiling(tmp_path: Path) -> None:
    backend = DiskcacheBackend(tmp_path / "lt", workers=1, max_workers=2, async_concurrency=1)
    gate = tmp_path / "gate"
    most = 0

    def judged() -> bool:
        # Both kinds run one job each, more of both wait, and the elastic pool has judged its
        # sync worker waiting (it would grow now, if the ceiling let it).
        nonlocal most
        views = backend.pool_workers() or []
        most = max(most, len(views))
        return any(view.waiting for view in views) and len(loop_workers(backend)) == 1

    try:
        with make_app(backend).app_context():
            coroutine_jobs = [jobs.wait_gate.submit(str(gate)) for _ in range(2)]
            wait_for(lambda: len(loop_workers(backend)) == 1, what="the loop worker")
            sync_jobs = [jobs.sync_gate.submit(str(gate)) for _ in range(3)]
            wait_for(judged, timeout=TIMEOUT, what="the sync worker judged waiting")
            judged()
            assert most == 2, most  # LONGTASK_MAX_WORKERS: the most worker processes, both kinds
            assert [job.status for job in coroutine_jobs + sync_jobs].count(JobStatus.QUEUED) == 3
            gate.touch()
            assert len({job.result(timeout=TIMEOUT) for job in coroutine_jobs + sync_jobs}) == 2
    finally:
        backend.close()


def test_an_idle_loop_worker_retires(tmp_path: Path) -> None:
    backend = DiskcacheBackend(tmp_path / "lt", workers=1, max_workers=2, worker_idle=0.3)
    try:
        with make_app(backend).app_context():
            pid = jobs.nap.submit(0).result(timeout=TIMEOUT)
            # No sync worker yet (and its loop worker may have retired already, under load).
            assert {view.pid for view in backend.pool_workers() or []} <= {pid}
            wait_for(lambda: backend.pool_workers() == [], what="the idle loop worker to retire")
            wait_for(lambda: not alive(pid), what="its process to exit")
            assert jobs.nap.submit(0).result(timeout=TIMEOUT) != pid  # a new one, for the next
    finally:
        backend.close()


def test_coroutine_jobs_submitted_from_many_threads_at_once_with_large_arguments_all_run(
    pool: DiskcacheBackend,
) -> None:
    # Each 20 KB argument is sent inline in its Handover, which takes two writes to the pipe; the
    # submitting threads and the dispatcher send to the same loop worker at once.
    payload, threads, each = "x" * 20_000, 8, 10
    submitted: list[t.Any] = []
    app = make_app(pool)

    def submit() -> None:
        with app.app_context():
            submitted.extend(jobs.measure.submit(payload, 0.2) for _ in range(each))

    with app.app_context():
        jobs.nap.submit(0).result(timeout=TIMEOUT)  # (its loop worker runs: the jobs are handed over)
        started = [threading.Thread(target=submit) for _ in range(threads)]
        for thread in started:
            thread.start()
        for thread in started:
            thread.join()
        assert [job.result(timeout=TIMEOUT) for job in submitted] == [len(payload)] * threads * each


def test_a_coroutine_job_that_cancels_a_queued_job_wakes_its_waiters(pool: DiskcacheBackend, tmp_path: Path) -> None:
    # That end is another job's, not one the loop worker runs: written on its own and announced
    # through the FIFO, as anywhere (not kept for a Done that never comes).
    gate = tmp_path / "gate"
    with make_app(pool).app_context():
        running = jobs.sync_gate.submit(str(gate))
        wait_for(lambda: running.status is JobStatus.RUNNING, what="the sync worker to be busy")
        queued = jobs.sync_gate.submit(str(gate))
        assert jobs.cancel_job.submit(str(pool.directory), queued.id).result(timeout=TIMEOUT) == "cancelled"
        assert queued.wait(timeout=5) is JobStatus.CANCELLED
        gate.touch()
        assert running.result(timeout=TIMEOUT) > 0


def test_coroutine_jobs_submitted_in_another_process_reach_a_loop(pool: DiskcacheBackend) -> None:
    # A process that does not host the pool queues them through the FIFO ("q <id> a").
    other = DiskcacheBackend(pool.directory, embedded=False)
    try:
        with make_app(pool).app_context():
            host_pid = jobs.nap.submit(0).result(timeout=TIMEOUT)
        with make_app(other, "tests.test_async_other").app_context():
            job = jobs.progress_then_nap.submit(0.01)
            assert job.result(timeout=TIMEOUT) == job.id
            assert jobs.nap.submit(0).result(timeout=TIMEOUT) == host_pid
    finally:
        other.close()


def test_a_coroutine_that_blocks_its_loop_for_good_ends_its_worker_and_its_neighbours(
    pool: DiskcacheBackend, tmp_path: Path
) -> None:
    log = tmp_path / "log"
    with make_app(pool).app_context():
        neighbour = jobs.progress_then_nap.submit(30)
        wait_for(lambda: neighbour.progress == "napping", what="the neighbour to start")
        hog = jobs.hog.submit(str(log), 60.0)  # time.sleep(60) on the loop: the user's bug
        line = wait_for(lambda: "\n" in (text := log.read_text() if log.exists() else "") and text, what="the hog")
        pid = int(line.split()[1])
        # The loop misses its pulse past the heartbeat timeout and the grace (2 + 0.5 s here): the
        # worker's watchdog stops it, naming the hog; its neighbour, which could never run again,
        # fails with that reason rather than run on forever.
        assert neighbour.wait(timeout=TIMEOUT) is JobStatus.FAILED
        assert neighbour.error is not None and f"({hog.id}) blocked the event loop" in neighbour.error["message"]
        assert hog.wait(timeout=TIMEOUT) is JobStatus.FAILED
        assert hog.error is not None and hog.error["type"] == "WorkerLostError"
        wait_for(lambda: not alive(pid), what="the blocked worker to exit")
        # The next coroutine jobs go to a new worker.
        assert jobs.nap.submit(0).result(timeout=TIMEOUT) != pid


def test_a_coroutine_that_raises_system_exit_ends_its_worker_as_a_sync_job_does(
    pool: DiskcacheBackend, tmp_path: Path
) -> None:
    gate = tmp_path / "gate"
    with make_app(pool).app_context():
        pid = jobs.nap.submit(0).result(timeout=TIMEOUT)
        neighbour = jobs.wait_gate.submit(str(gate))
        wait_for(lambda: neighbour.status is JobStatus.RUNNING, what="the neighbour to start")
        job = jobs.exits.submit()
        # It fails with SystemExit, and its process exits (as a sync worker's does), its neighbour
        # lost with the reason said; the next coroutine job runs on a new worker.
        assert job.wait(timeout=TIMEOUT) is JobStatus.FAILED
        assert job.error is not None and "SystemExit" in job.error["type"] + job.error["message"]
        assert neighbour.wait(timeout=TIMEOUT) is JobStatus.FAILED
        assert neighbour.error is not None and "SystemExit" in neighbour.error["message"]
        wait_for(lambda: not alive(pid), what="its worker to exit")
        assert jobs.nap.submit(0).result(timeout=TIMEOUT) != pid


def test_a_coroutine_that_swallows_the_cancel_is_stopped_once_its_neighbours_end(tmp_path: Path) -> None:
    backend = DiskcacheBackend(tmp_path / "lt", workers=1, max_workers=3)
    log, gate = tmp_path / "log", tmp_path / "gate"
    try:
        with make_app(backend).app_context():
            neighbour = jobs.wait_gate.submit(str(gate))
            wait_for(lambda: neighbour.status is JobStatus.RUNNING, what="the neighbour to start")
            job = jobs.stubborn.submit(str(log))
            wait_for(lambda: log.exists() and log.read_text(), what="the stubborn one to start")
            pid = int(log.read_text().split()[0])
            job.cancel()
            # It ends cancelled at the grace's end (0.5 s), as before...
            assert job.wait(timeout=0.5 + 1.0) is JobStatus.CANCELLED
            # ...its worker takes no more jobs while its leftover runs beside the neighbour...
            assert jobs.nap.submit(0).result(timeout=TIMEOUT) != pid
            size = log.stat().st_size
            wait_for(lambda: log.stat().st_size > size, what="the leftover to go on meanwhile")
            # ...and exits once the neighbour has ended: the leftover with it.
            gate.touch()
            assert neighbour.result(timeout=TIMEOUT) == pid
            wait_for(lambda: not alive(pid), what="the drained worker to exit")
            size = log.stat().st_size
            assert jobs.nap.submit(0).result(timeout=TIMEOUT) != pid
            assert log.stat().st_size == size  # (nothing of it runs any more)
            assert job.status is JobStatus.CANCELLED and neighbour.status is JobStatus.SUCCEEDED
    finally:
        backend.close()


def test_a_cancelled_coroutine_that_blocks_its_loop_ends_its_worker(pool: DiskcacheBackend, tmp_path: Path) -> None:
    log = tmp_path / "log"
    with make_app(pool).app_context():
        neighbour = jobs.progress_then_nap.submit(30)
        wait_for(lambda: neighbour.progress == "napping", what="the neighbour to start")
        hog = jobs.hog.submit(str(log), 30.0)
        line = wait_for(lambda: "\n" in (text := log.read_text() if log.exists() else "") and text, what="the hog")
        pid = int(line.split()[1])
        hog.cancel()
        # CancelledError cannot reach it (the loop never turns): after the grace (0.5 s) its
        # worker exits, and every job it ran ends with it, the reason said.
        assert hog.wait(timeout=TIMEOUT) is JobStatus.CANCELLED
        assert neighbour.wait(timeout=TIMEOUT) is JobStatus.FAILED
        assert neighbour.error is not None and "blocked the event loop" in neighbour.error["message"]
        # The next coroutine jobs go to a new worker.
        assert jobs.nap.submit(0).result(timeout=TIMEOUT) != pid


def test_a_loop_worker_killed_mid_job_loses_its_jobs_and_the_next_runs_on_a_new_one(
    pool: DiskcacheBackend, tmp_path: Path
) -> None:
    gate = tmp_path / "gate"
    with make_app(pool).app_context():
        pid = jobs.nap.submit(0).result(timeout=TIMEOUT)
        running = [jobs.wait_gate.submit(str(gate)) for _ in range(2)]
        wait_for(lambda: all(job.status is JobStatus.RUNNING for job in running), what="both to run")
        os.kill(pid, signal.SIGKILL)
        for job in running:
            assert job.wait(timeout=TIMEOUT) is JobStatus.FAILED
            assert job.error is not None and job.error["type"] == "WorkerLostError"
            assert "killed by SIGKILL" in job.error["message"]
        assert jobs.nap.submit(0).result(timeout=TIMEOUT) != pid


def test_coroutine_jobs_running_as_the_pool_shuts_down_end_lost(tmp_path: Path) -> None:
    gate = tmp_path / "gate"
    first = DiskcacheBackend(tmp_path / "lt", workers=1, max_workers=1)
    try:
        with make_app(first).app_context():
            running = [jobs.wait_gate.submit(str(gate)) for _ in range(3)]
            wait_for(lambda: all(job.status is JobStatus.RUNNING for job in running), what="all to run")
            pids = [view.pid for view in loop_workers(first)]
    finally:
        first.close()
    assert pids and not any(alive(pid) for pid in pids)  # nothing of them left running
    second = DiskcacheBackend(tmp_path / "lt", embedded=False)
    try:
        with make_app(second).app_context():
            for job in running:
                ended = jobs.longtask.get_job(job.id)
                assert ended.status is JobStatus.FAILED and ended.error is not None
                assert "shut down while it ran" in ended.error["message"]
    finally:
        second.close()


def test_the_host_dies_while_coroutine_jobs_run_and_a_standby_takes_over(tmp_path: Path) -> None:
    directory, gate = tmp_path / "lt", tmp_path / "gate"
    out = (tmp_path / "worker.log").open("wb")
    host = cli_host(directory, out, LONGTASK_WORKERS="1")
    submitter = DiskcacheBackend(directory, embedded=False)  # a web process that never hosts
    app = Flask("tests.async_submitter")
    diskcache_jobs.longtask.init_app(app, backend=submitter)
    standby = None
    try:
        with app.app_context():
            pid_files = [tmp_path / f"pid{n}" for n in range(2)]
            running = [diskcache_jobs.wait_file.submit(str(gate), str(f)) for f in pid_files]
            pids = wait_for(
                lambda: (
                    all(f.exists() and f.read_text() for f in pid_files) and {int(f.read_text()) for f in pid_files}
                ),
                timeout=TIMEOUT,
                what="both coroutine jobs to run",
            )
            standby = DiskcacheBackend(directory)  # stands by while the host holds the pool
            app2 = Flask("tests.async_standby")
            diskcache_jobs.longtask.init_app(app2, backend=standby)
            host.kill()  # kill -9 the process hosting the pool
            host.wait(10)
            wait_for(lambda: not any(alive(pid) for pid in pids), what="its loop worker to exit with it")
            with app2.app_context():
                for job in running:
                    ended = diskcache_jobs.longtask.get_job(job.id)
                    assert ended.wait(timeout=TIMEOUT) is JobStatus.FAILED and ended.error is not None
                    assert "hosting the worker pool died" in ended.error["message"]
                gate.touch()
                again = diskcache_jobs.wait_file.submit(str(gate), str(tmp_path / "pid2"))
                assert again.result(timeout=TIMEOUT) not in pids  # on the standby's own loop worker
    finally:
        if standby is not None:
            standby.close()
        submitter.close()
        stop_process(host)
        out.close()


def test_fifty_coroutine_jobs_on_thread_backend_take_about_one_jobs_time() -> None:
    backend = ThreadBackend(workers=1)  # (one thread for sync jobs; the coroutine jobs share a loop)
    try:
        with make_app(backend).app_context():
            began = time.monotonic()
            many = [jobs.nap.submit(NAP) for _ in range(MANY)]
            for job in many:
                job.wait(timeout=TIMEOUT)
            took = time.monotonic() - began
            assert all(job.status is JobStatus.SUCCEEDED for job in many)
            assert took < AT_ONCE, took
    finally:
        backend.close()


def test_bad_concurrency_is_refused() -> None:
    for bad in (0, -1, 1.5, True, "10"):
        with pytest.raises(ValueError, match="LONGTASK_ASYNC_CONCURRENCY"):
            ThreadBackend(async_concurrency=bad)  # type: ignore[arg-type]


@pytest.mark.xdist_group("celery")
def test_fifty_coroutine_jobs_on_one_celery_worker_of_threads_take_about_one_jobs_time(tmp_path: Path) -> None:
    # Celery's prefork pool runs one job per process (one loop each); a worker of the threads
    # pool runs a job per thread, and its coroutine jobs all on the process's one loop.
    celery = pytest.importorskip("celery")
    from flask_longtask.backends.celery import CeleryBackend

    (tmp_path / "redis").mkdir()
    redis, url = start_redis(tmp_path / "redis")
    worker = None
    try:
        log = tmp_path / "worker.log"
        worker = start_celery_worker("tests.celery_app:celery_app", url, log, concurrency=MANY, pool="threads")
        probe = celery.Celery("probe", broker=url)
        wait_until(lambda: probe.control.ping(timeout=0.5), 60, "the Celery worker to answer ping")
        backend = CeleryBackend(celery.Celery("tests.async_client", broker=url), redis_url=url)
        with make_app(backend).app_context():
            first = jobs.nap.submit(0).result(timeout=TIMEOUT)
            began = time.monotonic()
            many = [jobs.nap.submit(NAP) for _ in range(MANY)]
            pids = {job.result(timeout=TIMEOUT) for job in many}
            took = time.monotonic() - began
        assert pids == {first} and took < AT_ONCE, (pids, took)
        backend.close()
    finally:
        if worker is not None:
            stop(worker)
        stop(redis)


def test_a_loop_workers_job_threads_are_kept_for_the_next_jobs() -> None:
    # KeptThreads (a loop worker's threads of jobs): as many threads as calls at once, each
    # kept when its call ends, and reused by the next calls; a call that raises loses none.
    from flask_longtask.backends.diskcache.loops import KeptThreads

    threads = KeptThreads()
    gate, lock = threading.Event(), threading.Lock()
    seen: list[list[int]] = [[], []]
    done: list[int] = []

    def call(round_: int, fail: bool = False) -> None:
        with lock:
            seen[round_].append(threading.get_ident())
        gate.wait(TIMEOUT)
        with lock:
            done.append(round_)
        if fail:
            raise RuntimeError("a call that fails")

    for i in range(5):
        threads.run(call, 0, i == 0)
    wait_for(lambda: len(seen[0]) == 5, what="five calls running at once")
    gate.set()
    wait_for(lambda: len(done) == 5 and threads.idle == 5, what="the five calls to end, their threads kept")
    gate.clear()
    for _ in range(5):
        threads.run(call, 1)
    wait_for(lambda: len(seen[1]) == 5, what="five more calls running at once")
    gate.set()
    assert len(set(seen[0])) == 5
    assert set(seen[1]) == set(seen[0])  # the same five threads, the one whose call raised among them
