"""The elastic pool on jobs that wait, and on jobs that burn CPU, against Dash's DiskcacheManager.

    PYTHONPATH=. python benchmarks/bench_waiting.py [--rounds 3] [--pairs 10] [--worker-idle 1] [--wide 32]

Prints a Markdown table. Both sides are driven at the manager level, as ``bench_diskcache.py``
drives them: ours through ``task.submit()`` and ``Job.result()`` (this process hosts the pool),
Dash's through ``DiskcacheManager.call_job_fn`` and ``result_ready``/``get_result``. The cases:

1. 20 jobs submitted at once that each sleep 0.2 s: wall time, peak processes, peak RSS.
2. 200 such jobs: wall time, how many hung (no result within 60 s); also on a pool with a high
   ceiling (``--wide``, 32 by default).
3. 20 jobs submitted at once that each run 0.2 s of pure Python (a loop calibrated here): wall
   time of the elastic pool (the defaults: ``workers`` = CPUs, ``max_workers`` = 4 per CPU)
   against a fixed pool (``workers == max_workers`` = CPUs), and the most jobs running at once
   (from each job's start and end, read in the workers).

Processes and RSS are those of this process's descendants, sampled every 5 ms: every process
either side starts (ours: the fork server, the resource tracker and the workers; Dash's: one
forked process per job). Three pools are hosted here, each with its own app and directory: the
elastic pool with the defaults, a fixed pool, and an elastic pool with a high ceiling
(``--wide``). Before each case of ours, every pool is back at ``workers`` and the workers it
retired have exited: extra workers retire after ``--worker-idle`` seconds (1 by default here,
so that the run is short; 60 in an app). The two CPU cases run in ``--pairs`` pairs that
alternate which runs first, and the ratio is the median of the pairs' ratios. Ours runs first
and its pools are closed before Dash's run (Dash forks this process for each job: see
``bench_diskcache.py``).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import subprocess
import sys
import tempfile
import time
import typing as t

from flask import Flask

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.bench_diskcache import Dash
from flask_longtask import LongTask
from flask_longtask.backends.diskcache import DiskcacheBackend, elastic

CPUS = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def make_app() -> Flask:
    return Flask(__name__)


#: Worker processes re-import this script and make their app with ``make_app``.
longtask = LongTask(app_factory=make_app)


@longtask.task
def nap(seconds: float) -> float:
    time.sleep(seconds)
    return seconds


def spin(n: int) -> tuple[float, float]:
    """``n`` turns of a pure-Python loop; when it started and ended (epoch)."""
    started = time.time()
    total = 0
    for i in range(n):
        total += i
    return started, time.time()


@longtask.task
def burn(n: int) -> tuple[float, float]:
    return spin(n)


def dash_nap(seconds: float) -> float:
    time.sleep(seconds)
    return seconds


def dash_burn(n: int) -> tuple[float, float]:
    return spin(n)


def calibrate(seconds: float) -> int:
    """The turns of :func:`spin` that take ``seconds`` here, on an idle CPU (best of five)."""
    n = 200_000
    best = min(_timed(n) for _ in range(5))
    return int(n * seconds / best)


def _timed(n: int) -> float:
    started, ended = spin(n)
    return ended - started


def most_at_once(spans: list[tuple[float, float]]) -> int:
    """The most of these (start, end) spans that overlap at one moment."""
    events = sorted([(start, 1) for start, _ in spans] + [(end, -1) for _, end in spans])
    running = peak = 0
    for _, step in events:
        running += step
        peak = max(peak, running)
    return peak


class Sampler:
    """Peak number and summed RSS of this process's descendants while a block runs, but those in
    ``ignore`` (the workers of the other pools hosted here, idle meanwhile; before Dash's run, the
    fork server and resource tracker our pools left).

    The sampling runs in a process of its own (not counted): listing descendants reads every
    process's ``/proc/<pid>/stat``, and a thread doing that every 5 ms in this process would take
    the GIL from the side being measured, which submits its jobs from here.
    """

    def __init__(self, ignore: t.Collection[int] = ()) -> None:
        self.ignore = set(ignore)
        self.procs, self.rss = 0, 0
        self._process: subprocess.Popen[str] | None = None

    def __enter__(self) -> Sampler:
        args = [sys.executable, "-c", _SAMPLE, str(os.getpid()), *map(str, self.ignore)]
        self._process = subprocess.Popen(args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert self._process.stdout is not None
        if self._process.stdout.readline().strip() != "ready":
            raise RuntimeError("the sampler did not start")
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._process is not None
        out, _ = self._process.communicate()  # closes its stdin: it stops and prints its peaks
        self.procs, self.rss = json.loads(out)


_SAMPLE = """
import json, os, select, sys
import psutil

root, ignore = psutil.Process(int(sys.argv[1])), {int(pid) for pid in sys.argv[2:]} | {os.getpid()}
procs = rss = 0
print("ready", flush=True)
while not select.select([sys.stdin], [], [], 0.005)[0]:
    children = [child for child in root.children(recursive=True) if child.pid not in ignore]
    total = 0
    for child in children:
        try:
            total += child.memory_info().rss
        except psutil.Error:
            pass
    procs, rss = max(procs, len(children)), max(rss, total)
print(json.dumps([procs, rss]))
"""


class Run(t.NamedTuple):
    wall: float
    procs: int
    rss: float  # MiB
    hung: int
    most: int  # most jobs running at once (CPU case only)


def ours(
    task: t.Any, arg: t.Any, count: int, ignore: t.Collection[int], timeout: float = 60.0, *, many: bool = False
) -> Run:
    """``count`` jobs of ``task(arg)``, a ``submit()`` each (``many``: one ``submit_many()``)."""
    hung, spans = 0, []
    with Sampler(ignore) as sampler:
        started = time.perf_counter()
        jobs = task.submit_many([arg] * count) if many else [task.submit(arg) for _ in range(count)]
        deadline = time.monotonic() + timeout
        for job in jobs:
            try:
                result = job.result(timeout=max(0.0, deadline - time.monotonic()))
            except Exception:
                hung += 1
                continue
            if isinstance(result, (list, tuple)):
                spans.append(tuple(result))
        wall = time.perf_counter() - started
    return Run(wall, sampler.procs, sampler.rss / 2**20, hung, most_at_once(spans))


def dash(manager: Dash, fn: t.Callable[..., t.Any], arg: t.Any, count: int, timeout: float = 60.0) -> Run:
    import psutil

    hung, spans = 0, []
    with Sampler({child.pid for child in psutil.Process().children(recursive=True)}) as sampler:
        started = time.perf_counter()
        submitted = [manager.submit(fn, [arg]) for _ in range(count)]
        deadline = time.monotonic() + timeout
        for key, pid in submitted:
            ready = manager.manager.result_ready
            while not ready(key) and time.monotonic() < deadline:
                time.sleep(0.001)
            if not ready(key):
                hung += 1
                continue
            result = manager.manager.get_result(key, pid)
            if isinstance(result, (list, tuple)):
                spans.append(tuple(result))
        wall = time.perf_counter() - started
    return Run(wall, sampler.procs, sampler.rss / 2**20, hung, most_at_once(spans))


def settle(pools: t.Iterable[DiskcacheBackend], timeout: float = 120.0) -> None:
    """Wait until every pool is back at ``workers`` and its retired workers have exited (this
    process's descendants are then the fork server, the resource tracker and those workers):
    30 Python processes exiting would take CPU from the next case."""
    import psutil

    pools = list(pools)
    deadline = time.monotonic() + timeout
    while any(len(pool.pool_workers() or []) > pool.workers for pool in pools) or len(
        psutil.Process().children(recursive=True)
    ) > 2 + sum(pool.workers for pool in pools):
        if time.monotonic() > deadline:
            raise TimeoutError("the pools did not shrink back")
        time.sleep(0.05)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3, help="runs of each sleeping case of ours (median)")
    parser.add_argument("--pairs", type=int, default=10, help="runs of each CPU case of ours, in pairs")
    parser.add_argument("--worker-idle", type=float, default=1.0)
    parser.add_argument("--wide", type=int, default=32, help="max_workers of the pool with a high ceiling")
    opts = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    root = tempfile.mkdtemp(prefix="bench-waiting-")
    turns = calibrate(0.2)

    # Three pools, each with its own app and directory, all hosted here: the elastic pool with
    # the defaults, a fixed pool of CPUs, and an elastic pool with a high ceiling (--wide).
    pools = {
        "elastic": DiskcacheBackend(os.path.join(root, "elastic"), worker_idle=opts.worker_idle),
        "fixed": DiskcacheBackend(os.path.join(root, "fixed"), workers=CPUS, max_workers=CPUS),
        "wide": DiskcacheBackend(os.path.join(root, "wide"), max_workers=opts.wide, worker_idle=opts.worker_idle),
    }
    apps = {}
    for name, backend in pools.items():
        apps[name] = make_app()
        longtask.init_app(apps[name], backend=backend)
        with apps[name].app_context():
            for _ in range(20):  # the pool, its fork server and its workers started and warm
                nap.submit(0).result(timeout=60)
    cases = {
        "sleep20": ("elastic", nap, 0.2, 20),
        "sleep200": ("elastic", nap, 0.2, 200),
        "wide200": ("wide", nap, 0.2, 200),
        "cpu20": ("elastic", burn, turns, 20),
        "fixed20": ("fixed", burn, turns, 20),
    }
    results: dict[str, list[Run]] = {name: [] for name in cases}
    # The sleeping cases, --rounds times; then the CPU cases in --pairs pairs, which alternate
    # which runs first (the machine's load moves a single pair by 20%).
    order = [name for _ in range(opts.rounds) for name in ("sleep20", "sleep200", "wide200")]
    order += [name for i in range(opts.pairs) for name in (("cpu20", "fixed20"), ("fixed20", "cpu20"))[i % 2]]
    for name in order:
        pool, task, arg, count = cases[name]
        with apps[pool].app_context():
            settle(pools.values())
            others = {w.pid for other in pools if other != pool for w in pools[other].pool_workers() or []}
            results[name].append(ours(task, arg, count, others))
    size, ceiling = pools["elastic"].workers, elastic.ceiling(pools["elastic"].workers, None)
    for backend in pools.values():
        backend.close()

    manager = Dash(os.path.join(root, "dash"))
    theirs = {
        "sleep20": [dash(manager, dash_nap, 0.2, 20) for _ in range(opts.rounds)],
        "sleep200": [dash(manager, dash_nap, 0.2, 200)],  # (one run: 200 forks take a while)
        "cpu20": [dash(manager, dash_burn, turns, 20)],
    }

    def median(runs: list[Run], field: str) -> float:
        return statistics.median(getattr(run, field) for run in runs)

    s20, d20 = results["sleep20"], theirs["sleep20"]
    s200, d200, w200 = results["sleep200"], theirs["sleep200"], results["wide200"]
    c20, f20, dc20 = results["cpu20"], results["fixed20"], theirs["cpu20"]
    rows = [
        (
            "20 jobs sleeping 0.2 s: wall time (median)",
            f"{median(s20, 'wall'):.2f} s",
            f"{median(d20, 'wall'):.2f} s",
            f"{median(s20, 'wall') / median(d20, 'wall'):.2f}x Dash's",
            "<= 2.5x",
        ),
        (
            "the same: peak processes (most of the runs)",
            f"{max(r.procs for r in s20)}",
            f"{max(r.procs for r in d20)}",
            f"{max(r.procs for r in s20) / max(r.procs for r in d20):.2f} of Dash's",
            "<= 0.6",
        ),
        (
            "the same: peak RSS of those processes (most of the runs)",
            f"{max(r.rss for r in s20):.0f} MiB",
            f"{max(r.rss for r in d20):.0f} MiB",
            f"{max(r.rss for r in s20) / max(r.rss for r in d20):.2f} of Dash's",
            "less",
        ),
        (
            "200 jobs sleeping 0.2 s: wall time (median; Dash: one run)",
            f"{median(s200, 'wall'):.2f} s",
            f"{median(d200, 'wall'):.2f} s",
            f"{median(s200, 'wall') / median(d200, 'wall'):.2f}x Dash's",
            "< 1x",
        ),
        (
            "the same: hung (no result in 60 s, all runs) / peak processes",
            f"{sum(r.hung for r in s200)} / {max(r.procs for r in s200)}",
            f"{sum(r.hung for r in d200)} / {max(r.procs for r in d200)}",
            "-",
            "none hung",
        ),
        (
            f"the same with max_workers={opts.wide}: wall time (median) / peak processes / peak RSS",
            f"{median(w200, 'wall'):.2f} s / {max(r.procs for r in w200)} / {max(r.rss for r in w200):.0f} MiB",
            f"{median(d200, 'wall'):.2f} s / {max(r.procs for r in d200)} / {max(r.rss for r in d200):.0f} MiB",
            f"{median(w200, 'wall') / median(d200, 'wall'):.2f}x Dash's",
            "< 1x",
        ),
        (
            f"20 jobs of 0.2 s of pure Python: wall time, elastic / fixed pool of {CPUS} (median of the pairs)",
            f"{median(c20, 'wall'):.2f} s / {median(f20, 'wall'):.2f} s",
            f"{median(dc20, 'wall'):.2f} s",
            f"{statistics.median(c.wall / f.wall for c, f in zip(c20, f20, strict=True)):.2f}x the fixed pool",
            "<= 1.10x",
        ),
        (
            "the same: most jobs running at once, elastic / fixed (most of the runs)",
            f"{max(r.most for r in c20)} / {max(r.most for r in f20)}",
            f"{max(r.most for r in dc20)}",
            f"CPUs + {max(r.most for r in c20) - CPUS}",
            f"<= CPUs + 1 = {CPUS + 1}",
        ),
    ]
    print(
        f"\nElastic DiskcacheBackend (workers={size}, max_workers={ceiling}, worker_idle={opts.worker_idle} s)"
        f" vs Dash DiskcacheManager, {CPUS} CPUs, Python {sys.version.split()[0]}, {opts.rounds} rounds,"
        f" {opts.pairs} CPU pairs\n"
    )
    print("| measure | Flask-LongTask | Dash | ratio | target |")
    print("| --- | --- | --- | --- | --- |")
    for row in rows:
        print("| " + " | ".join(row) + " |")


if __name__ == "__main__":
    main()
