"""The elastic pool does not oversubscribe the CPUs with work that burns them (issue 17's rule),
wherever that work runs: in the job's own thread, in a thread it waits for, in a child process;
nor when the dispatcher is kept busy for a while; and a pool that grew for waiting jobs sheds its
extra workers once its jobs burn CPU.

What ran at once is read from each job's own start and end, as the workers saw them: on a machine
loaded by other programs a job takes longer, but no more of them run at once.
"""

from __future__ import annotations

import logging
import time
import typing as t
from pathlib import Path

import pytest

from flask_longtask.backends.diskcache import DiskcacheBackend
from tests import diskcache_jobs as jobs
from tests import test_diskcache_elastic
from tests.test_diskcache import workers_of
from tests.test_diskcache_elastic import CPUS, grows, wait_for_growth

#: Makes elastic pools, closes them, and checks no worker outlives them.
pools = test_diskcache_elastic.pools

Span = tuple[int, float, float]


def most_at_once(spans: t.Iterable[Span]) -> int:
    """The most of these jobs (pid, start, end) that ran at one moment."""
    spans = list(spans)
    events = sorted([(start, 1) for _, start, _ in spans] + [(end, -1) for _, _, end in spans])
    running = most = 0
    for _, step in events:
        running += step
        most = max(most, running)
    return most


def warm(backend: DiskcacheBackend) -> None:
    """Run a job on each warm worker that lasts over a second: a pool that has run for a while."""
    for job in [jobs.nap.submit(1.1) for _ in range(backend.workers)]:
        job.result(timeout=60)


@pytest.mark.parametrize("where", ["thread", "child"])
def test_jobs_that_burn_cpu_in_a_thread_or_a_child_process_do_not_oversubscribe_the_cpus(
    pools: t.Any, where: str
) -> None:
    """A job whose main thread waits for a thread that burns CPU, or for a child process that
    does: the first is seen in the worker's CPU time, the second only in the CPUs' (nobody else's
    work explains it), and the pool does not grow past the CPUs for either."""
    backend, app = pools(workers=1, max_workers=8)
    with app.app_context():
        warm(backend)
        spans = [job.result(timeout=180) for job in [jobs.burn_timed.submit(1.0, where) for _ in range(8)]]
    assert most_at_once(spans) <= CPUS, spans


class SlowSweep(DiskcacheBackend):
    """A pool whose sweep of expired records takes 0.3 s (a big directory): the dispatcher reads
    no worker's message meanwhile, and workers whose job ended wait for their next."""

    def cleanup(self) -> int:
        time.sleep(0.3)  # the sweep's work
        return super().cleanup()


def test_a_dispatcher_kept_busy_by_a_slow_sweep_does_not_grow_a_pool_that_burns_cpu(pools: t.Any) -> None:
    backend, app = pools(SlowSweep, workers=min(2, CPUS), max_workers=8, cleanup_interval=0.7)
    with app.app_context():
        spans = [job.result(timeout=180) for job in [jobs.burn_timed.submit(0.5) for _ in range(16)]]
    assert most_at_once(spans) <= CPUS, spans


@grows
def test_a_pool_grown_for_waiting_jobs_sheds_its_extra_workers_once_its_jobs_burn_cpu(
    pools: t.Any, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A burst of waiting jobs grows the pool; then a steady stream of jobs that burn CPU: once
    they are seen to fill the CPUs, only ``max(workers, CPUs)`` workers are given jobs, the others
    go idle and retire, and no more jobs burn at once than CPUs. Nothing is lost."""
    caplog.set_level(logging.ERROR)
    backend, app = pools(workers=1, max_workers=6, worker_idle=0.5)
    gate = tmp_path / "gate"
    with app.app_context():
        naps = [jobs.until_path.submit(str(gate)) for _ in range(12)]
        wait_for_growth(lambda: len(workers_of(backend)) >= 3, "the pool to grow for waiting jobs")
        gate.touch()
        # Keep jobs that burn CPU queued until the pool is back to the CPUs (it grew past them).
        burns = []
        deadline = time.monotonic() + 60
        while len(workers_of(backend)) > CPUS:
            assert time.monotonic() < deadline, "the pool kept its extra workers busy with jobs that burn CPU"
            if (backend.queue_length() or 0) < 2 * CPUS:
                burns += [jobs.burn_timed.submit(0.3) for _ in range(CPUS)]
            time.sleep(0.02)  # (a feeder's pace: the pool is looked at again)
        shed = time.time()
        after = [jobs.burn_timed.submit(0.3) for _ in range(4 * CPUS)]
        assert all(isinstance(job.result(timeout=60), int) for job in naps)
        spans = [job.result(timeout=120) for job in burns + after]
    assert len(spans) == len(burns) + len(after)
    assert most_at_once(span for span in spans if span[1] >= shed) <= CPUS
    assert not [r for r in caplog.records if "died" in r.getMessage()]  # (a retirement is no death)
