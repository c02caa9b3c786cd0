"""DiskcacheBackend against Dash's own DiskcacheManager, on the same work, in the same run.

    python benchmarks/bench_diskcache.py [--jobs 200] [--rounds 5] [--memory-jobs 10000] [--workers 2]

Prints a Markdown table of the issue's four targets and the ratio for each. Both sides are
measured at the level an app uses them: ours through ``task.submit()`` and ``Job.result()``,
Dash's through ``DiskcacheManager.call_job_fn`` and ``result_ready``/``get_result``, polled on
the schedule ``Job.wait`` uses in a process that does not host our pool (every 0.25 ms for
10 ms, then backing off). ``Job.wait`` in the process hosting the pool (here, this one) blocks
until the job's end wakes it, which Dash's manager cannot do. Throughput is the median of
``--rounds`` batches on each side: one batch of 200 no-op jobs takes ~0.1 s of ours, short
enough for a noisy machine to move it by 20%.
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import sys
import tempfile
import time
import typing as t
import uuid

import diskcache
from flask import Flask

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from flask_longtask import LongTask, current_job
from flask_longtask.backends.diskcache import DiskcacheBackend


def make_app() -> Flask:
    return Flask(__name__)


#: Worker processes re-import this script and make their app with ``make_app``.
longtask = LongTask(app_factory=make_app)


@longtask.task
def noop() -> None:
    return None


@longtask.task
def loop(n: int, progress: str, work: int = 0) -> float:
    """The same tight loop without progress ("none"), with ``current_job.set_progress`` each
    time round ("proxy"), or with the method looked up once ("bound"); returns its own duration.
    ``work`` > 0 adds ``sum(range(work))`` to each iteration: a loop that does something."""
    started = time.perf_counter()
    total = 0
    if progress == "none":
        for i in range(n):
            total += sum(range(work)) if work else i
    elif progress == "proxy":
        for i in range(n):
            total += sum(range(work)) if work else i
            current_job.set_progress(i)
    else:
        set_progress = current_job.set_progress
        for i in range(n):
            total += sum(range(work)) if work else i
            set_progress(i)
    return time.perf_counter() - started


def dash_noop() -> int:
    return 0  # Dash's result_ready() cannot tell a stored None from no result


def dash_loop(set_progress: t.Callable[[t.Any], None], n: int) -> float:
    started = time.perf_counter()
    total = 0
    for i in range(n):
        total += i
        set_progress(i)
    return time.perf_counter() - started


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def anon_mb() -> float:
    """Private memory only: without the pages of the SQLite file that SQLite maps into memory."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def _poll(ready: t.Callable[[], bool], timeout: float = 60.0) -> None:
    """Poll Dash's manager on the schedule ``Job.wait`` polls ours: every 0.25 ms for the first
    10 ms, then backing off to 50 ms. (A coarser schedule would add its own delay to Dash's time.)"""
    start = time.monotonic()
    while not ready():
        elapsed = time.monotonic() - start
        if elapsed > timeout:
            raise TimeoutError("job did not finish")
        time.sleep(0.00025 if elapsed < 0.01 else min(0.05, elapsed / 10))


class Dash:
    def __init__(self, directory: str) -> None:
        from dash.background_callback.managers.diskcache_manager import DiskcacheManager

        self.manager = DiskcacheManager(diskcache.Cache(directory))

    def submit(self, fn: t.Callable[..., t.Any], args: list[t.Any], progress: bool = False) -> tuple[str, int]:
        key = uuid.uuid4().hex
        job_fn = self.manager.make_job_fn(fn, progress)
        return key, self.manager.call_job_fn(key, job_fn, args, {})

    def result(self, key: str, pid: int) -> t.Any:
        _poll(lambda: self.manager.result_ready(key))
        return self.manager.get_result(key, pid)


def latency(submit_and_wait: t.Callable[[], t.Any], n: int) -> float:
    times = []
    for _ in range(n):
        started = time.perf_counter()
        submit_and_wait()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def throughput(submit_all_and_wait: t.Callable[[], None], jobs: int, rounds: int) -> float:
    """Jobs per second of ``rounds`` batches of ``jobs`` submitted at once: the median batch."""
    rates = []
    for _ in range(rounds):
        started = time.perf_counter()
        submit_all_and_wait()
        rates.append(jobs / (time.perf_counter() - started))
    return statistics.median(rates)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=200)
    parser.add_argument("--memory-jobs", type=int, default=10_000)
    parser.add_argument("--progress-calls", type=int, default=100_000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=5, help="throughput batches per side (median)")
    opts = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    root = tempfile.mkdtemp(prefix="bench-longtask-")
    backend = DiskcacheBackend(os.path.join(root, "ours"), workers=opts.workers)
    app = make_app()
    longtask.init_app(app, backend=backend)

    # All of ours first, then the pool is closed, then all of Dash's: Dash forks this process
    # for each job, and a fork taken while our pool's dispatcher thread is inside SQLite can hang
    # in the child (the hazard Dash's process-per-job design has in any threaded server); and a
    # forked child still tearing down would take CPU from our next sample.
    with app.app_context():
        for _ in range(20):  # start the pool and warm both workers
            noop.submit().result(timeout=60)

        ours = latency(lambda: noop.submit().result(timeout=60), opts.jobs)

        def ours_batch() -> None:
            for job in [noop.submit() for _ in range(opts.jobs)]:
                job.result(timeout=120)

        ours_rate = throughput(ours_batch, opts.jobs, opts.rounds)

        plain = min(loop.submit(opts.progress_calls, "none").result(timeout=120) for _ in range(3))
        with_progress = min(loop.submit(opts.progress_calls, "proxy").result(timeout=120) for _ in range(3))
        bound = min(loop.submit(opts.progress_calls, "bound").result(timeout=120) for _ in range(3))

        # The same with ~1 us of work per iteration: where set_progress's ~0.1 us stops mattering.
        plain_work = min(loop.submit(opts.progress_calls, "none", 40).result(timeout=120) for _ in range(3))
        work_progress = min(loop.submit(opts.progress_calls, "proxy", 40).result(timeout=120) for _ in range(3))
        progress_rows = [
            (
                "the same, `set_progress` looked up once before the loop",
                f"{bound * 1e3:.0f} ms / {plain * 1e3:.0f} ms",
                "-",
                f"{bound / plain:.2f}x",
                "<= 1.5x",
            ),
            (
                "the same, each iteration also doing `sum(range(40))` (~1 us)",
                f"{work_progress * 1e3:.0f} ms / {plain_work * 1e3:.0f} ms",
                "-",
                f"{work_progress / plain_work:.2f}x",
                "<= 1.5x",
            ),
        ]

        for _ in range(100):
            noop.submit().result(timeout=60)
        rss_100, anon_100 = rss_mb(), anon_mb()
        batch = 500
        for _ in range(max(0, opts.memory_jobs - 100) // batch):
            for job in [noop.submit() for _ in range(batch)]:
                job.result(timeout=120)
        rss_many, anon_many = rss_mb(), anon_mb()
        memory_rows = [
            (
                f"web-process RSS after {opts.memory_jobs:,} jobs / after 100",
                f"{rss_many:.1f} MB / {rss_100:.1f} MB",
                "-",
                f"{rss_many / rss_100:.3f}x",
                "<= 1.10x",
            ),
            (
                "the same, private memory only (RssAnon)",
                f"{anon_many:.1f} MB / {anon_100:.1f} MB",
                "-",
                f"{anon_many / anon_100:.3f}x",
                "<= 1.10x",
            ),
        ]
    backend.close()

    dash = Dash(os.path.join(root, "dash"))
    theirs = latency(lambda: dash.result(*dash.submit(dash_noop, [])), opts.jobs)

    def dash_batch() -> None:
        for key, pid in [dash.submit(dash_noop, []) for _ in range(opts.jobs)]:
            dash.result(key, pid)

    theirs_rate = throughput(dash_batch, opts.jobs, opts.rounds)
    key, pid = dash.submit(dash_loop, [opts.progress_calls], progress=True)
    dash_progress = dash.result(key, pid)

    rows = [
        (
            "submit -> result, no-op job (median)",
            f"{ours * 1e3:.2f} ms",
            f"{theirs * 1e3:.2f} ms",
            f"{theirs / ours:.1f}x faster",
            ">= 20x",
        ),
        (
            f"throughput, {opts.jobs} no-op jobs at once (median of {opts.rounds} batches)",
            f"{ours_rate:.0f} jobs/s",
            f"{theirs_rate:.0f} jobs/s",
            f"{ours_rate / theirs_rate:.1f}x",
            ">= 10x",
        ),
        (
            f"{opts.progress_calls:,} `current_job.set_progress` calls / same loop without",
            f"{with_progress * 1e3:.0f} ms / {plain * 1e3:.0f} ms",
            f"{dash_progress * 1e3:.0f} ms with progress",
            f"{with_progress / plain:.2f}x",
            "<= 1.5x",
        ),
        *progress_rows,
        *memory_rows,
    ]
    print(
        f"\nDiskcacheBackend (workers={opts.workers}) vs Dash DiskcacheManager, {os.cpu_count()} CPUs, "
        f"Python {sys.version.split()[0]}\n"
    )
    print("| measure | Flask-LongTask | Dash | ratio | target |")
    print("| --- | --- | --- | --- | --- |")
    for row in rows:
        print("| " + " | ".join(row) + " |")


if __name__ == "__main__":
    main()
