"""The elastic pool of DiskcacheBackend (issue 17), with real worker processes.

It grows for queued jobs while its workers' jobs wait (sleep, I/O), up to ``max_workers``; not
past the CPUs for jobs that burn CPU; and its extra workers exit after ``worker_idle`` seconds
without a job. Seen through ``pool_workers()`` (``WorkerView.waiting``: how the host judged each
worker) and the pids the jobs return. The counts are small: the machine has 2 CPUs and runs two
test files at once.
"""

from __future__ import annotations

import logging
import math
import os
import threading
import time
import typing as t
from pathlib import Path

import pytest
from flask import Flask

from flask_longtask import LongTask
from flask_longtask.backends.diskcache import DiskcacheBackend, elastic
from flask_longtask.backends.diskcache.workers import WorkerView
from tests import diskcache_jobs as jobs
from tests.helpers import wait_for
from tests.test_diskcache import exists, host_pids, make_app, workers_of

#: The CPUs the pool may use (those this process may run on, within its cgroup's quota).
CPUS = elastic.CPUS


@pytest.fixture
def pools(tmp_path: Path) -> t.Iterator[t.Callable[..., tuple[DiskcacheBackend, Flask]]]:
    """Makes elastic pools (each with its app); closes them and checks no worker outlives them."""
    made: list[DiskcacheBackend] = []

    def make(cls: type[DiskcacheBackend] = DiskcacheBackend, **kwargs: t.Any) -> tuple[DiskcacheBackend, Flask]:
        backend = cls(tmp_path / f"lt{len(made)}", **kwargs)
        made.append(backend)
        return backend, make_app(backend)

    yield make
    pids = []
    for backend in made:
        pids += host_pids(backend)
        backend.close()
    wait_for(lambda: not [pid for pid in pids if exists(pid)], 10, "no worker to outlive the pool")


#: For a test that waits for the pool to grow: other programs may keep the CPUs busy for minutes.
grows = pytest.mark.timeout(900)
#: The CPUs idle during which the pool grows, whatever uses the others (see ``elastic.growth``).
GROWS_WITH = min(1.25, CPUS - elastic.IDLE_CPU)


def wait_for_growth(condition: t.Callable[[], t.Any], what: str, idle: float = 15.0) -> None:
    """Wait until ``condition`` holds, as :func:`wait_for` does, counting only the time during
    which the CPUs were idle enough for the pool to grow (:data:`GROWS_WITH`): other programs may
    keep them busy for a while, and it does not grow then (for up to four minutes: mark the test
    :data:`grows`). Fails after ``idle`` seconds of that."""
    cpus = elastic.Cpus()
    last, last_at = cpus.read(), time.monotonic()
    counted, deadline = 0.0, last_at + 240
    while not condition():
        now = time.monotonic()
        if now - last_at >= 0.1:
            read = cpus.read()
            assert read is not None and last is not None
            if (read[0] - last[0]) / (now - last_at) >= GROWS_WITH:
                counted += now - last_at
            last, last_at = read, now
        if counted > idle or now > deadline:
            raise AssertionError(f"Timed out after {counted:.1f} s with the CPUs idle waiting for {what}")
        time.sleep(0.01)


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

    def growth(shares: list[float], unknown: int = 0, cpus: int = 2, queued: int = 10, **seen: t.Any) -> int:
        seen = {"room": 10, "free": 1.8, "other": 0.1, **seen}  # (free: idle CPUs; other: CPUs not explained)
        return elastic.growth(shares, unknown=unknown, cpus=cpus, queued=queued, **seen)

    # Every worker judged, and waiting: one for each job waiting, within the room.
    assert growth([waiting, waiting], queued=7) == 7
    assert growth([waiting] * 4, room=1) == 1
    # Some too new to be judged: as many again as wait (or up to the free CPUs).
    assert growth([waiting] * 4, unknown=2) == 4
    assert growth([waiting] * 4, unknown=2, queued=3) == 3
    assert growth([waiting, burning], cpus=4) == 3
    # Burning workers fill the CPUs: none, however many wait.
    assert growth([burning, burning, waiting]) == 0
    # A pool smaller than the CPUs grows to them with work that burns CPU; not past them.
    assert growth([burning]) == 1
    assert growth([burning], unknown=1) == 0
    # Nothing judged yet (workers too young), or nothing queued: none.
    assert growth([], unknown=2) == 0
    assert growth([waiting], queued=0) == 0
    # Less than half a CPU idle, whoever uses them: none.
    assert growth([waiting, waiting], free=0.4) == 0
    assert growth([waiting, waiting], free=0.4, other=1.6) == 0
    # The CPUs are used by what the judgements do not see (a job's child processes, another
    # program): one per whole CPU idle, less the workers not judged yet.
    assert growth([waiting], free=0.95, other=1.0) == 0
    assert growth([waiting], free=1.1, other=1.0) == 1
    assert growth([waiting], cpus=4, free=2.9, other=1.0) == 2
    assert growth([waiting], unknown=1, cpus=4, free=2.9, other=1.0) == 1


def test_the_cpus_a_cgroup_quota_allows(tmp_path: Path) -> None:
    """The quota of this process's cgroup (the tightest on its path) caps the CPUs it may use:
    cgroup v2 and v1, as files under a root the test makes."""

    def tree(files: dict[str, str], cgroups: str) -> tuple[str, str]:
        root = tmp_path / f"root{len(list(tmp_path.iterdir()))}"
        for name, text in files.items():
            (root / name).parent.mkdir(parents=True, exist_ok=True)
            (root / name).write_text(text)
        (root / "cgroup").write_text(cgroups)
        return str(root), str(root / "cgroup")

    v2 = {"cgroup.controllers": "cpu", "app/cpu.max": "max 100000", "app/job/cpu.max": "150000 100000"}
    root, cgroups = tree(v2, "0::/app/job\n")
    assert elastic.cgroup_quota(root, cgroups) == elastic.Quota(1.5, f"{root}/app/job/cpu.stat")
    v2["app/cpu.max"] = "50000 100000"  # a parent's is tighter
    root, cgroups = tree(v2, "0::/app/job\n")
    assert elastic.cgroup_quota(root, cgroups) == elastic.Quota(0.5, f"{root}/app/cpu.stat")
    root, cgroups = tree({"cgroup.controllers": "cpu", "cpu.max": "200000 100000"}, "0::/elsewhere\n")
    assert elastic.cgroup_quota(root, cgroups) == elastic.Quota(2.0, f"{root}/cpu.stat")  # (a container's own)
    v1 = {"cpu/cpu.cfs_quota_us": "-1", "cpu/cpu.cfs_period_us": "100000", "cpuacct/cpuacct.usage": "0"}
    root, cgroups = tree(v1, "4:memory:/x\n3:cpu,cpuacct:/\n0::/\n")
    assert elastic.cgroup_quota(root, cgroups) is None
    v1["cpu/cpu.cfs_quota_us"] = "300000"
    root, cgroups = tree(v1, "3:cpu,cpuacct:/\n0::/\n")
    assert elastic.cgroup_quota(root, cgroups) == elastic.Quota(3.0, f"{root}/cpuacct/cpuacct.usage")
    assert elastic.cgroup_quota(root, str(tmp_path / "missing")) is None
    # What this process may use: its CPUs, within its quota.
    quota = elastic.cgroup_quota()
    affinity = len(os.sched_getaffinity(0))
    expected = affinity if quota is None else max(1, min(affinity, math.ceil(quota.cpus)))
    assert CPUS == elastic.usable_cpus() == expected


def test_what_is_read_from_proc() -> None:
    used = elastic.demand(os.getpid())
    assert used is not None and used > 0
    assert elastic.demand(2**22 + 1) is None  # (above pid_max: no such process)
    cpus = elastic.Cpus()
    first = cpus.read()
    assert first is not None
    idle = lambda: t.cast("tuple[float, float]", cpus.read())[0]
    wait_for(lambda: idle() > first[0], 10, "some CPU to be idle (or waiting for I/O)")
    assert 0 < cpus.capacity <= len(os.sched_getaffinity(0))


def test_the_settings_and_their_checks(tmp_path: Path) -> None:
    app = Flask(__name__)
    app.config.update(LONGTASK_WORKERS=2, LONGTASK_MAX_WORKERS=5, LONGTASK_WORKER_IDLE=7)
    backend = DiskcacheBackend.from_app(app)
    assert (backend.workers, backend.max_workers, backend.worker_idle) == (2, 5, 7.0)
    assert DiskcacheBackend(tmp_path / "lt", worker_idle=0).workers == CPUS  # (the default)
    with pytest.raises(ValueError, match="max_workers"):
        DiskcacheBackend(tmp_path / "lt", workers=4, max_workers=2)
    bad: list[tuple[dict[str, t.Any], type[Exception], str]] = [
        ({"max_workers": 0}, ValueError, "max_workers must be at least 1"),
        ({"max_workers": -3}, ValueError, "max_workers must be at least 1"),
        ({"max_workers": 2.5}, TypeError, "max_workers must be a whole number"),
        ({"max_workers": "8"}, TypeError, "max_workers must be a whole number"),
        ({"max_workers": True}, TypeError, "max_workers must be a whole number"),
        ({"workers": 0}, ValueError, "workers must be at least 1"),
        ({"max_workers": CPUS + 1, "workers": CPUS + 2}, ValueError, "must not be below"),
        ({"worker_idle": -5}, ValueError, "worker_idle must be a finite number"),
        ({"worker_idle": math.nan}, ValueError, "worker_idle must be a finite number"),
        ({"worker_idle": math.inf}, ValueError, "worker_idle must be a finite number"),
        ({"worker_idle": None}, TypeError, "worker_idle must be a number"),
    ]
    if CPUS > 1:  # checked against the workers kept warm by default (the CPUs)
        bad.append(({"max_workers": 1}, ValueError, rf"max_workers \(1\) must not be below workers \({CPUS}\)"))
    for kwargs, error, message in bad:
        with pytest.raises(error, match=message):
            DiskcacheBackend(tmp_path / "lt", **kwargs)
    # From the app's config: refused as the app is set up, the setting named.
    for key, value, error in [
        ("LONGTASK_MAX_WORKERS", 0, ValueError),
        ("LONGTASK_MAX_WORKERS", "8", TypeError),
        ("LONGTASK_WORKER_IDLE", None, TypeError),
        ("LONGTASK_WORKER_IDLE", -1.0, ValueError),
        ("LONGTASK_WORKERS", -2, ValueError),
    ]:
        app = Flask(__name__)
        app.config.update(LONGTASK_DISKCACHE_DIR=str(tmp_path / "lt"), **{key: value})
        with pytest.raises(error, match=key):
            LongTask(app)


@grows
def test_jobs_that_wait_grow_the_pool_up_to_max_workers(pools: t.Any, tmp_path: Path) -> None:
    backend, app = pools(workers=1, max_workers=3)
    gate = tmp_path / "gate"
    with app.app_context(), Watch(backend) as watch:
        submitted = [jobs.until_path.submit(str(gate)) for _ in range(9)]
        wait_for_growth(lambda: len(workers_of(backend)) == 3, "the pool to grow to max_workers")
        gate.touch()
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


@grows
def test_extra_workers_retire_when_idle_and_the_pool_keeps_its_minimum(
    pools: t.Any, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    backend, app = pools(workers=1, max_workers=3, worker_idle=0.5)
    gates = [tmp_path / "gate1", tmp_path / "gate2"]
    with app.app_context():
        submitted = [jobs.until_path.submit(str(gates[0])) for _ in range(9)]
        wait_for_growth(lambda: len(workers_of(backend)) == 3, "the pool to grow")
        grown = host_pids(backend)
        gates[0].touch()
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
        # A retirement is no death: nothing failed, no back-off, and the pool grows again.
        assert jobs.add.submit(1, 2).result(timeout=30) == 3
        again = [jobs.until_path.submit(str(gates[1])) for _ in range(6)]
        wait_for_growth(lambda: len(workers_of(backend)) == 3, "the pool to grow again")
        gates[1].touch()
        assert len({job.result(timeout=60) for job in again}) >= 2
    assert not [record for record in caplog.records if record.levelno >= logging.WARNING]  # (no "died while idle")


@grows
def test_a_job_submitted_while_the_pool_shrinks_is_not_lost(pools: t.Any, tmp_path: Path) -> None:
    backend, app = pools(workers=1, max_workers=4, worker_idle=0.3)
    gate = tmp_path / "gate"
    with app.app_context():
        submitted = [jobs.until_path.submit(str(gate)) for _ in range(12)]
        wait_for_growth(lambda: len(workers_of(backend)) >= 3, "the pool to grow")
        gate.touch()
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


@grows
def test_a_worker_judged_waiting_is_sent_no_job_ahead(pools: t.Any, tmp_path: Path) -> None:
    """A worker whose job was judged waiting, given its next job while jobs are queued, is sent
    none of them ahead: they stay queued for the next free worker (its job will run a while)."""
    backend, app = pools(workers=1, max_workers=2)
    gates = [tmp_path / "gate1", tmp_path / "gate2"]
    with app.app_context():
        first, second = [jobs.until_path.submit(str(gate)) for gate in gates]
        probes = [jobs.ahead_while.submit(0.3) for _ in range(4)]  # (each keeps what is sent ahead)

        def judged() -> bool:
            views = workers_of(backend)
            return {view.job_id for view in views} == {first.id, second.id} and all(view.waiting for view in views)

        wait_for_growth(judged, "both workers running the first two jobs, judged waiting")
        gates[0].touch()  # the first worker ends its job and runs the first probe, jobs still queued
        assert probes[0].result(timeout=30) == 0
        gates[1].touch()
        assert [job.result(timeout=30) for job in (first, second, *probes[1:])]


@grows
def test_growing_and_retiring_leaves_no_descriptor_open(pools: t.Any, tmp_path: Path) -> None:
    """Each retired worker's pipe, lifeline and process (its sentinel) are closed once it exited."""
    backend, app = pools(workers=1, max_workers=3, worker_idle=0.2)

    def descriptors() -> int:
        return len(os.listdir("/proc/self/fd"))

    with app.app_context():
        jobs.add.submit(1, 2).result(timeout=30)  # (the pool and its first worker started)
        before = descriptors()
        for cycle in range(2):
            gate = tmp_path / f"gate{cycle}"
            waiting = [jobs.until_path.submit(str(gate)) for _ in range(6)]
            wait_for_growth(lambda: len(workers_of(backend)) == 3, "the pool to grow")
            gate.touch()
            assert all(job.result(timeout=60) for job in waiting)
            wait_for(lambda: len(workers_of(backend)) == 1, 30, "the extra workers to retire")
            wait_for(lambda: descriptors() <= before, 10, "the retired workers' descriptors to be closed")


class FailingChores(DiskcacheBackend):
    """A pool whose sweep fails at every tick once told to (a storage error, say)."""

    failing = False

    def cleanup(self) -> int:
        if self.failing:
            raise OSError("the sweep failed")
        return super().cleanup()


@grows
def test_the_pool_still_shrinks_while_its_ticks_fail(
    pools: t.Any, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    backend, app = pools(FailingChores, workers=1, max_workers=3, worker_idle=0.3, cleanup_interval=0.05)
    gate = tmp_path / "gate"
    with app.app_context():
        waiting = [jobs.until_path.submit(str(gate)) for _ in range(6)]
        wait_for_growth(lambda: len(workers_of(backend)) == 3, "the pool to grow")
        gate.touch()
        assert all(job.result(timeout=60) for job in waiting)
        t.cast(FailingChores, backend).failing = True
        wait_for(lambda: len(workers_of(backend)) == 1, 30, "the extra workers to retire")
    assert "the sweep failed" in caplog.text  # (logged, and the dispatcher went on)
