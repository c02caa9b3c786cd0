"""Coroutine jobs on the default pool, against Dash's DiskcacheManager running them as ``async def``.

    PYTHONPATH=. python benchmarks/bench_async.py [--jobs 200] [--seconds 0.2] [--rounds 3]

Prints a Markdown table. 200 jobs submitted at once that each ``await asyncio.sleep(0.2)``:

- ours: an ``async def`` task on ``DiskcacheBackend`` with its default pool (``workers`` = the
  CPUs, ``max_workers`` = 4 per CPU, ``LONGTASK_ASYNC_CONCURRENCY`` = 100): its coroutine jobs run
  on workers of their own, 100 at once on each one's event loop;
- Dash: the same ``async def`` as a background callback of its ``DiskcacheManager``, driven at
  the manager level as ``bench_waiting.py`` drives it (``make_job_fn``, ``call_job_fn``,
  ``result_ready``/``get_result``): a process each, which runs it with ``asyncio.run``;
- beside them, the same jobs written as a sync task (``time.sleep(0.2)``) on our pool, which
  grows for jobs that wait, up to its ceiling.

Ours is timed twice, alternating in each round: with a ``submit()`` per job (as Dash's side is
driven: it has no other way) and with one ``task.submit_many()`` for the 200 (one transaction
for all of them). Wall time from the first submit to the last result, and the peak number and RSS of this
process's descendants (sampled every 5 ms: ours, the fork server, the resource tracker and the
workers; Dash's, one forked process per job). Ours runs first, ``--rounds`` times (the median),
and its pool is closed before Dash's run (Dash forks this process for each job: see
``bench_diskcache.py``).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import statistics
import sys
import tempfile
import time

from flask import Flask

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.bench_diskcache import Dash
from benchmarks.bench_waiting import CPUS, Run, dash, ours
from flask_longtask import LongTask
from flask_longtask.backends.diskcache import DiskcacheBackend, elastic


def make_app() -> Flask:
    return Flask(__name__)


#: Worker processes re-import this script and make their app with ``make_app``.
longtask = LongTask(app_factory=make_app)


@longtask.task
async def anap(seconds: float) -> float:
    await asyncio.sleep(seconds)
    return seconds


@longtask.task
def nap(seconds: float) -> float:
    time.sleep(seconds)
    return seconds


async def dash_anap(seconds: float) -> float:
    await asyncio.sleep(seconds)
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=200)
    parser.add_argument("--seconds", type=float, default=0.2)
    parser.add_argument("--rounds", type=int, default=3)
    opts = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    root = tempfile.mkdtemp(prefix="bench-async-")

    backend = DiskcacheBackend(os.path.join(root, "ours"))  # the defaults
    app = make_app()
    longtask.init_app(app, backend=backend)
    with app.app_context():
        anap.submit(0).result(timeout=60)  # the pool's host, its fork server, a first loop worker
        coro: list[Run] = []
        many: list[Run] = []
        for _ in range(opts.rounds):  # (alternating: neither gets the warmer pool)
            coro.append(ours(anap, opts.seconds, opts.jobs, ()))
            many.append(ours(anap, opts.seconds, opts.jobs, (), many=True))
        sync = ours(nap, opts.seconds, opts.jobs, ())
        size = f"{backend.workers} workers, up to {elastic.ceiling(backend.workers, backend.max_workers)}"
    backend.close()

    manager = Dash(os.path.join(root, "dash"))
    theirs = [dash(manager, dash_anap, opts.seconds, opts.jobs) for _ in range(opts.rounds)]

    def median(runs: list[Run], field: str) -> float:
        return statistics.median(getattr(run, field) for run in runs)

    wall, many_wall, dash_wall = median(coro, "wall"), median(many, "wall"), median(theirs, "wall")
    procs, dash_procs = max(r.procs for r in coro + many), max(r.procs for r in theirs)
    rss, dash_rss = max(r.rss for r in coro + many), max(r.rss for r in theirs)
    hung = sum(r.hung for r in coro + many) + sync.hung, sum(r.hung for r in theirs)
    print(
        f"{opts.jobs} jobs that each wait {opts.seconds:g} s, submitted at once; our pool: {size};"
        f" {CPUS} CPUs, Python {sys.version.split()[0]}, {opts.rounds} rounds (median wall, peak of the rest)"
    )
    print()
    print("| measure | Flask-LongTask, `async def` | Dash, `async def` | ratio | target | ours, sync `time.sleep` |")
    print("| --- | --- | --- | --- | --- | --- |")
    print(
        f"| wall time, a `submit()` each | {wall:.2f} s | {dash_wall:.2f} s | {dash_wall / wall:.1f}x shorter | >= 5x"
        f" | {sync.wall:.2f} s |"
    )
    print(
        f"| wall time, one `submit_many()` | {many_wall:.2f} s | {dash_wall:.2f} s (a submit each)"
        f" | {dash_wall / many_wall:.1f}x shorter | >= 5x | - |"
    )
    print(f"| peak processes | {procs} | {dash_procs} | {procs / dash_procs:.3f} of Dash's | <= 0.1 | {sync.procs} |")
    print(
        f"| peak RSS of those processes | {rss:.0f} MB | {dash_rss:.0f} MB | {rss / dash_rss:.3f} | -"
        f" | {sync.rss:.0f} MB |"
    )
    print(f"| jobs without a result in 60 s | {hung[0]} | {hung[1]} | - | 0 | - |")


if __name__ == "__main__":
    main()
