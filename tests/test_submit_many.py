"""``Task.submit_many``: a batch of jobs, every call checked before any is queued, stored and
queued together. The core's rules on ThreadBackend; the pool's one transaction with real worker
processes. (That every backend runs a batch is in the conformance suite.)"""

from __future__ import annotations

import contextlib
import threading
import typing as t
from pathlib import Path

import pytest
from flask import Flask

from flask_longtask import JobStatus, LongTask, QueueFullError, current_job, signals
from flask_longtask.backends import ThreadBackend
from flask_longtask.backends.base import JobRequest
from flask_longtask.backends.diskcache import DiskcacheBackend

from . import async_jobs, diskcache_jobs
from .helpers import wait_for

TIMEOUT = 30.0


def test_a_job_per_set_of_arguments_in_order(app: Flask, longtask: LongTask) -> None:
    @longtask.task
    def add(a: int, b: int) -> int:
        return a + b

    with app.app_context():
        jobs = add.submit_many(range(5), [10] * 5)
        assert len({job.id for job in jobs}) == 5
        assert [job.result(timeout=10) for job in jobs] == [10, 11, 12, 13, 14]
        assert add.submit_many([]) == []


def test_a_bad_call_anywhere_queues_nothing_and_names_its_place(app: Flask, longtask: LongTask) -> None:
    ran: list[t.Any] = []

    @longtask.task
    def one(x: t.Any) -> None:
        ran.append(x)

    with app.app_context():
        with pytest.raises(TypeError, match=r"item 2 of submit_many.*cannot be serialised"):
            one.submit_many([1, 2, threading.Lock(), 4])
        with pytest.raises(TypeError, match=r"item 0 of submit_many.*too many"):
            one.submit_many([1, 2], [3, 4])  # (two arguments each; the task takes one)
        with pytest.raises(ValueError, match="different lengths"):
            one.submit_many([1, 2], [3])
        with pytest.raises(TypeError, match="at least one iterable"):
            one.submit_many()
        assert longtask.jobs() == [] and ran == []


@contextlib.contextmanager
def one_worker(longtask: LongTask, max_queued: int) -> t.Iterator[tuple[Flask, ThreadBackend, threading.Event]]:
    """An app on a ThreadBackend of one worker with ``LONGTASK_MAX_QUEUED`` set, and a gate that
    its tests' jobs wait for (set at the end)."""
    backend = ThreadBackend(workers=1)
    app = Flask(f"tests.max_queued_{max_queued}")
    app.config["LONGTASK_MAX_QUEUED"] = max_queued
    longtask.init_app(app, backend=backend)
    gate = threading.Event()
    try:
        yield app, backend, gate
    finally:
        gate.set()
        backend.close()


def test_a_batch_that_would_overfill_the_queue_is_refused_whole(longtask: LongTask) -> None:
    with one_worker(longtask, 5) as (app, backend, gate):

        @longtask.task
        def held(n: int) -> int:
            gate.wait(TIMEOUT)
            return n

        with app.app_context():
            first = held.submit_many(range(4))  # one runs, three wait
            wait_for(lambda: backend.queue_length() == 3, what="three jobs queued")
            with pytest.raises(QueueFullError, match="3 jobs are already queued, and 3 more") as refused:
                held.submit_many(range(3))
            assert refused.value.adding == 3 and refused.value.limit == 5
            assert len(longtask.jobs()) == 4  # nothing of the refused batch
            more = held.submit_many(range(2))  # exactly up to the limit
            gate.set()
            assert [job.result(timeout=TIMEOUT) for job in first + more] == [0, 1, 2, 3, 0, 1]


def test_memoized_calls_reuse_results_and_share_one_job_within_a_batch(app: Flask, longtask: LongTask) -> None:
    runs: list[int] = []

    @longtask.task(cache_by=[])
    def square(n: int) -> int:
        runs.append(n)
        return n * n

    with app.app_context():
        done = square.submit(3)
        assert done.result(timeout=10) == 9
        jobs = square.submit_many([1, 2, 1, 3])
        assert jobs[0] == jobs[2]  # the same call twice in the batch: one job
        assert jobs[3] == done  # a memoized result: the job that has it
        assert [job.result(timeout=10) for job in jobs] == [1, 4, 1, 9]
    assert sorted(runs) == [1, 2, 3]


class _BrokerDownFromThird(ThreadBackend):
    """A backend whose broker refuses the third message it is given, and every one after, once
    the job's records are written (as a Celery broker can): a custom backend, storing a batch's
    jobs one by one (no ``stores_batches``)."""

    given = 0

    def enqueue(self, request: JobRequest) -> None:
        self.given += 1
        if self.given >= 3:
            raise ConnectionError("the broker went away")
        super().enqueue(request)


def test_a_backend_failing_part_way_cancels_what_it_queued_and_removes_the_rest(longtask: LongTask) -> None:
    backend = _BrokerDownFromThird(workers=1)
    app = Flask("tests.failing")
    longtask.init_app(app, backend=backend)
    gate = threading.Event()

    @longtask.task
    def held(n: int) -> int:
        while not gate.is_set() and not current_job.is_cancel_requested:
            gate.wait(0.005)  # the job's own work: waiting for its gate or its cancel
        return n

    try:
        with app.app_context():
            with pytest.raises(ConnectionError, match="went away"):
                held.submit_many(range(5))
            listed = longtask.jobs()
            # The two queued before the failure, cancelled; the third, stored but not queued,
            # removed as a failed submit() removes its job; the last two never stored.
            assert len(listed) == 2
            for job in listed:
                assert job.wait(TIMEOUT) is JobStatus.CANCELLED
            gate.set()
            with pytest.raises(ConnectionError):
                held.submit(7)  # (the broker is still down)
            assert len(longtask.jobs()) == 2
    finally:
        gate.set()
        backend.close()


def test_repeated_calls_count_once_against_the_queue_and_say_cache_hit(longtask: LongTask) -> None:
    hits: list[bool] = []
    with one_worker(longtask, 2) as (app, _, gate):

        @longtask.task(cache_by=[])
        def held(n: int) -> int:
            gate.wait(TIMEOUT)
            return n

        with signals.cache_hit.connected_to(lambda sender, job, in_flight: hits.append(in_flight), sender=app):
            with app.app_context():
                singles = [held.submit(5) for _ in range(3)]  # one job, two hits in flight
                assert len({job.id for job in singles}) == 1 and hits == [True, True]
                hits.clear()
                batch = held.submit_many([7, 7, 7])  # as three submit() calls: one job, accepted
                assert len({job.id for job in batch}) == 1 and hits == [True, True]
                gate.set()
                assert [job.result(timeout=TIMEOUT) for job in batch] == [7, 7, 7]


# -- the pool: one transaction, real worker processes --------------------------------------------------


def make_app(backend: DiskcacheBackend, longtask: LongTask) -> Flask:
    app = Flask("tests.test_submit_many")
    app.config.update(LONGTASK_PROGRESS_INTERVAL=0.01)
    longtask.init_app(app, backend=backend)
    return app


def test_a_batch_of_coroutine_jobs_fills_the_free_slots_and_queues_the_rest(tmp_path: Path) -> None:
    # 1 job running on a loop worker of 4 slots, then a batch of 9: 3 claimed for its free slots
    # in the batch's transaction, 6 queued for new loop workers.
    backend = DiskcacheBackend(tmp_path / "lt", workers=1, max_workers=4, async_concurrency=4)
    gate = tmp_path / "gate"
    try:
        with make_app(backend, async_jobs.longtask).app_context():
            first = async_jobs.wait_gate.submit(str(gate))
            wait_for(lambda: first.status is JobStatus.RUNNING, what="the first coroutine job to run")
            batch = async_jobs.wait_gate.submit_many([str(gate)] * 9)
            wait_for(
                lambda: sorted(len(view.coroutines) for view in backend.pool_workers() or []) == [2, 4, 4],
                what="10 coroutine jobs on 3 loop workers of 4 slots",
            )
            gate.touch()
            pids = [job.result(timeout=TIMEOUT) for job in [first, *batch]]
            assert len(set(pids)) == 3
            assert async_jobs.wait_gate.submit_many([str(gate)] * 3)[2].result(timeout=TIMEOUT) in pids
    finally:
        backend.close()


def test_a_batch_of_sync_jobs_submitted_outside_the_host_runs_once_each(tmp_path: Path) -> None:
    # Not the host's process (embedded=False: the FIFO): one transaction, then a line each.
    host = DiskcacheBackend(tmp_path / "lt", workers=2)
    client = DiskcacheBackend(tmp_path / "lt", embedded=False)
    log = tmp_path / "log"
    try:
        with make_app(host, diskcache_jobs.longtask).app_context():
            diskcache_jobs.noop.submit().result(timeout=TIMEOUT)  # (the pool is up)
        with make_app(client, diskcache_jobs.longtask).app_context():
            jobs = diskcache_jobs.record.submit_many([str(log)] * 40, range(40))
            assert [job.result(timeout=TIMEOUT) for job in jobs] == [n * 2 for n in range(40)]
            assert not client.is_pool_host
        started = sorted(int(line.split()[1]) for line in log.read_text().splitlines() if line.startswith("start"))
        assert started == list(range(40))
    finally:
        client.close()
        host.close()


def test_a_process_forked_while_the_factory_makes_an_app_makes_its_own(tmp_path: Path) -> None:
    # The app factory runs under a lock (one app per process); a fork while another thread is
    # in it must not leave the child with that lock held for good.
    from .test_coroutines import _run_script

    done = _run_script(
        tmp_path,
        """
        import os, signal, threading, warnings
        from flask import Flask
        from flask_longtask import LongTask

        warnings.simplefilter("ignore", DeprecationWarning)  # (fork() of a process with threads)
        inside, release = threading.Event(), threading.Event()

        def make_app():
            if threading.current_thread() is not threading.main_thread():
                inside.set()
                release.wait()
            return Flask("made")

        longtask = LongTask(app_factory=make_app)
        # Two apps registered, none of that name: a job's app is the factory's (as in a worker).
        for name in ("one", "two"):
            longtask.init_app(Flask(name))
        threading.Thread(target=longtask._app_for, args=("elsewhere",)).start()
        inside.wait()
        pid = os.fork()
        if pid == 0:
            signal.alarm(20)
            os._exit(0 if longtask._app_for("elsewhere").import_name == "made" else 1)
        release.set()
        print("child", os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]))
        """,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["child", "0"], done.stdout + done.stderr
