"""The elastic pool of DiskcacheBackend (issue 17), with real worker processes.

It grows for queued jobs while its workers' jobs wait (sleep, I/O), up to ``max_workers``; not
past the CPUs for jobs that burn CPU; and its extra workers exit after ``worker_idle`` seconds
without a job. Seen through ``pool_workers()`` (``WorkerView.waiting``: how the host judged each
worker) and the pids the jobs return. The counts are small: the machine has 2 CPUs and runs two
test files at once.
"""

from __future__ import annotations

import os
import threading
import time
import typing as t
from pathlib import Path

import pytest
from flask import Flask

from flask_longtask.backends.diskcache import DiskcacheBackend, elastic
from flask_longtask.backends.diskcache.workers import WorkerView
from tests import diskcache_jobs as jobs
from tests.helpers import wait_for
from tests.test_diskcache import exists, host_pids, make_app, workers_of

CPUS = len(os.sched_getaffinity(0))


@pytest.fixture
def pools(tmp_path: Path) -> t.Iterator[t.Callable[..., tuple[DiskcacheBackend, Flask]]]:
    """Makes elastic pools (each with its app); closes them and checks no worker outlives them."""
    made: list[DiskcacheBackend] = []

    def make(**kwargs: t.Any) -> tuple[DiskcacheBackend, Flask]:
        backend = DiskcacheBackend(tmp_path / f"lt{len(made)}", **kwargs)
        made.append(backend)
        return backend, make_app(backend)

    yield make
    pids = []
    for backend in made:
        pids += host_pids(backend)
        backend.close()
    wait_for(lambda: not [pid for pid in pids if exists(pid)], 10, "no worker to outlive the pool")


class Watch:
    """Looks at the pool in a thread while jobs run: every worker view it saw."""

    def __init__(self, backend: DiskcacheBackend) -> None:
        self.backend = backend
        self.seen: list[list[WorkerView]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.005):
            self.seen.append(self.backend.pool_workers() or [])  # (none until the first submit)

    @property
    def most(self) -> int:
        return max((len(views) for views in self.seen), default=0)

    def judged(self, waiting: bool) -> bool:
        return any(view.waiting is waiting for views in self.seen for view in views)

    def __enter__(self) -> Watch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def test_the_ceiling_and_the_growth_rule() -> None:
    assert elastic.ceiling(2, None) == max(2, 4 * CPUS)
    assert elastic.ceiling(64, None) == 64  # never below the workers kept warm
    assert elastic.ceiling(2, 3) == 3
    waiting, burning = 0.01, 0.97
    # Every worker judged, and waiting: one for each job waiting, within the room.
    assert elastic.growth([waiting, waiting], unknown=0, cpus=2, room=10, queued=7) == 7
    assert elastic.growth([waiting] * 4, unknown=0, cpus=2, room=1, queued=10) == 1
    # Some too new to be judged: as many again as wait (or up to the free CPUs).
    assert elastic.growth([waiting] * 4, unknown=2, cpus=2, room=10, queued=10) == 4
    assert elastic.growth([waiting] * 4, unknown=2, cpus=2, room=10, queued=3) == 3
    assert elastic.growth([waiting, burning], unknown=0, cpus=4, room=10, queued=10) == 3
    # Burning workers fill the CPUs: none, however many wait.
    assert elastic.growth([burning, burning, waiting], unknown=0, cpus=2, room=10, queued=10) == 0
    # A pool smaller than the CPUs grows to them with work that burns CPU; not past them.
    assert elastic.growth([burning], unknown=0, cpus=2, room=10, queued=10) == 1
    assert elastic.growth([burning], unknown=1, cpus=2, room=10, queued=10) == 0
    # Nothing judged yet (workers too young), or nothing queued: none.
    assert elastic.growth([], unknown=2, cpus=2, room=10, queued=10) == 0
    assert elastic.growth([waiting], unknown=0, cpus=2, room=10, queued=0) == 0


def test_a_process_cpu_is_read_from_proc() -> None:
    read = elastic.demand(os.getpid())
    assert read is not None
    used, sleeping = read
    assert used > 0 and sleeping is False  # (this thread is running)
    assert elastic.demand(2**22 + 1) is None  # (above pid_max: no such process)


def test_the_settings_and_their_checks(tmp_path: Path) -> None:
    app = Flask(__name__)
    app.config.update(LONGTASK_WORKERS=2, LONGTASK_MAX_WORKERS=5, LONGTASK_WORKER_IDLE=7)
    backend = DiskcacheBackend.from_app(app)
    assert (backend.workers, backend.max_workers, backend.worker_idle) == (2, 5, 7.0)
    with pytest.raises(ValueError, match="max_workers"):
        DiskcacheBackend(tmp_path / "lt", workers=4, max_workers=2)


def test_jobs_that_wait_grow_the_pool_up_to_max_workers(pools: t.Any) -> None:
    backend, app = pools(workers=1, max_workers=3)
    with app.app_context(), Watch(backend) as watch:
        submitted = [jobs.nap.submit(1.0) for _ in range(9)]
        wait_for(lambda: len(workers_of(backend)) == 3, 30, "the pool to grow to max_workers")
        pids = [job.result(timeout=60) for job in submitted]
    assert watch.most == 3  # never past the ceiling
    assert watch.judged(waiting=True)
    assert len(set(pids)) == 3  # each worker started for them ran some
    assert len(workers_of(backend)) == 3  # (worker_idle: 60 s by default)


def test_jobs_that_burn_cpu_do_not_grow_the_pool_past_the_cpus(pools: t.Any) -> None:
    backend, app = pools(workers=1, max_workers=4 * CPUS + 2)
    with app.app_context(), Watch(backend) as watch:
        pids = [job.result(timeout=120) for job in [jobs.burn.submit(0.5) for _ in range(4 * CPUS)]]
    assert watch.judged(waiting=False)
    assert watch.most <= CPUS
    assert len(set(pids)) <= CPUS


def test_extra_workers_retire_when_idle_and_the_pool_keeps_its_minimum(pools: t.Any) -> None:
    backend, app = pools(workers=1, max_workers=3, worker_idle=0.5)
    with app.app_context():
        submitted = [jobs.nap.submit(1.0) for _ in range(9)]
        wait_for(lambda: len(workers_of(backend)) == 3, 30, "the pool to grow")
        grown = host_pids(backend)
        assert sorted(job.result(timeout=60) for job in submitted)
        wait_for(lambda: len(workers_of(backend)) == 1, 10, "the extra workers to retire")
        kept = host_pids(backend)
        retired = set(grown) - set(kept)
        assert len(retired) == 2
        wait_for(lambda: not [pid for pid in retired if exists(pid)], 10, "the retired workers to exit")
        # Never below the minimum, however long it stays idle (a few times worker_idle).
        deadline = time.monotonic() + 4 * 0.5
        while time.monotonic() < deadline:
            assert host_pids(backend) == kept
            time.sleep(0.05)
        # A retirement is no death: nothing failed, no back-off, and the pool grows again at once.
        assert jobs.add.submit(1, 2).result(timeout=30) == 3
        again = [jobs.nap.submit(1.0) for _ in range(6)]
        wait_for(lambda: len(workers_of(backend)) == 3, 30, "the pool to grow again")
        assert len({job.result(timeout=60) for job in again}) >= 2


def test_a_job_submitted_while_the_pool_shrinks_is_not_lost(pools: t.Any) -> None:
    backend, app = pools(workers=1, max_workers=4, worker_idle=0.3)
    with app.app_context():
        submitted = [jobs.nap.submit(0.6) for _ in range(12)]
        wait_for(lambda: len(workers_of(backend)) >= 3, 30, "the pool to grow")
        for job in submitted:
            job.result(timeout=60)
        # Jobs keep coming while idle workers retire: one by one (handed to an idle worker), and
        # every second three at once (queued, sent ahead), which one worker can keep up with.
        n, burst_at = 0, 0.0
        deadline = time.monotonic() + 30
        while len(workers_of(backend)) > 1 or n < 100:
            assert time.monotonic() < deadline, "the pool did not shrink back"
            count = 3 if time.monotonic() >= burst_at else 1
            burst_at = burst_at if count == 1 else time.monotonic() + 1.0
            burst = [jobs.add.submit(n, i) for i in range(count)]
            assert [job.result(timeout=30) for job in burst] == [n + i for i in range(count)]
            n += 1
        assert len(workers_of(backend)) == 1


def test_a_fixed_pool_neither_grows_nor_judges(pools: t.Any) -> None:
    backend, app = pools(workers=2, max_workers=2, worker_idle=0.2)
    with app.app_context(), Watch(backend) as watch:
        pids = [job.result(timeout=60) for job in [jobs.nap.submit(0.5) for _ in range(8)]]
    assert watch.most == 2
    assert not watch.judged(waiting=True) and not watch.judged(waiting=False)  # (no CPU is read)
    assert len(set(pids)) == 2
