"""Listing jobs among 100,000 stored ones, on each backend's index.

    python -m benchmarks.bench_listing [--jobs 100000] [--repeat 20] [--backends thread,diskcache,celery]

Stores ``--jobs`` jobs on each backend the way jobs are stored (``store_and_enqueue`` of a
``NewJob``, then ``JobStore.finish``: the writes that keep the index), with nothing running
them: 97% end succeeded, 1% failed, 1% cancelled, 1% stay queued, over 10 tasks. Then times,
``--repeat`` times each (the median is printed), ``LongTask.jobs()`` (the index's page and the
read of its records, as an app calls it), the index's own answer (``Backend.list_jobs``), and
``LongTask.counts()``. Celery: a redis-server started for the run (``redis-server`` on PATH).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
import typing as t
from pathlib import Path

from flask import Flask

from flask_longtask import JobStatus, LongTask
from flask_longtask.backends import ThreadBackend
from flask_longtask.backends.base import Backend, JobQuery, JobRequest
from flask_longtask.extension import new_job_id

TASKS = 10
#: The mix of statuses the stored jobs end with (the rest stay queued).
MIX = ((JobStatus.SUCCEEDED, 97), (JobStatus.FAILED, 1), (JobStatus.CANCELLED, 1))


class IdleThread(ThreadBackend):
    def enqueue(self, request: JobRequest) -> None:  # stored, never run
        pass


def _backends(names: list[str], tmp: Path) -> t.Iterator[tuple[str, Backend, t.Callable[[], None]]]:
    if "thread" in names:
        yield "ThreadBackend", IdleThread(1), lambda: None
    if "diskcache" in names:
        from flask_longtask.backends.diskcache import DiskcacheBackend

        class IdleDiskcache(DiskcacheBackend):
            def enqueue(self, request: JobRequest) -> None:
                pass

        yield "DiskcacheBackend", IdleDiskcache(tmp / "dc", workers=1, embedded=False), lambda: None
    if "celery" in names:
        from celery import Celery

        from flask_longtask.backends.celery import CeleryBackend
        from tests.services import start_redis, stop

        class IdleCelery(CeleryBackend):
            def publish(self, job_id: str, countdown: float | None = None) -> None:
                pass

        proc, url = start_redis(tmp)
        yield "CeleryBackend", IdleCelery(Celery("bench", broker=url), redis_url=url), lambda: stop(proc)


def fill(app: Flask, backend: Backend, jobs: int) -> None:
    """Store ``jobs`` jobs and end most of them, as a worker would."""
    store = app.extensions["longtask"].store
    task = app.extensions["longtask"].longtask._tasks["bench.task0"]
    for i in range(jobs):
        job_id = new_job_id()
        name = f"bench.task{i % TASKS}"
        arguments = {"task": name, "module": __name__, "app": app.import_name, "args": backend.dumps(((i,), {}))}
        new = store.new_job(JobRequest(job_id, name, task, app), arguments, None, announce=lambda: None)
        backend.store_and_enqueue(new)
        k = (i // TASKS) % 100  # (independent of the task: 0.1% of a task's jobs fail)
        for status, share in MIX:
            if k < share:
                record = {**new.record, "started": time.time()}
                if status is JobStatus.FAILED:
                    store.finish(
                        record, status, app=app, error={"type": "ValueError", "message": "bench", "traceback": ""}
                    )
                else:
                    store.finish(record, status, app=app, result=backend.dumps(i))
                break
            k -= share


def timed(call: t.Callable[[], t.Any], repeat: int) -> tuple[float, t.Any]:
    samples, out = [], None
    for _ in range(repeat):
        start = time.perf_counter()
        out = call()
        samples.append((time.perf_counter() - start) * 1000)
    return statistics.median(samples), out


def _cases(longtask: LongTask, backend: Backend) -> list[tuple[str, t.Callable[[], t.Any]]]:
    newest = longtask.jobs(limit=100)
    return [
        ("newest page (100)", lambda: longtask.jobs(limit=100)),
        ("second page (100, before=)", lambda: longtask.jobs(limit=100, before=newest[-1].id)),
        ("status=failed (1%), 100", lambda: longtask.jobs(status="failed", limit=100)),
        ("task=bench.task3 (10%), 100", lambda: longtask.jobs(task="bench.task3", limit=100)),
        ("task + status=failed (0.1%), 100", lambda: longtask.jobs(task="bench.task3", status="failed")),
        ("status=queued (1%), 100", lambda: longtask.jobs(status="queued", limit=100)),
        ("index only: newest 100", lambda: backend.list_jobs(JobQuery(limit=100))),
        ("index only: failed, 100", lambda: backend.list_jobs(JobQuery("failed", limit=100))),
        ("counts()", longtask.counts),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=20)
    parser.add_argument("--backends", default="thread,diskcache,celery")
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="lt-bench-listing-"))
    rows = []
    for name, backend, stop in _backends(args.backends.split(","), tmp):
        app = Flask("bench")
        longtask = LongTask(app, backend=backend)
        for n in range(TASKS):
            longtask.task(lambda i: i, name=f"bench.task{n}")
        try:
            with app.app_context():
                started = time.perf_counter()
                fill(app, backend, args.jobs)
                filled = time.perf_counter() - started
                cases = _cases(longtask, backend)
                for case, call in cases:
                    ms, out = timed(call, args.repeat)
                    found = sum(out[s.value] for s in JobStatus) if isinstance(out, dict) else len(out)
                    rows.append((name, case, ms, found))
                print(f"{name}: {args.jobs} jobs stored in {filled:.1f} s ({filled / args.jobs * 1e6:.0f} us a job)")
        finally:
            backend.close()
            stop()
    print()
    print(f"| backend | {args.jobs:,} stored jobs: call | median (ms) | jobs returned (counted) |")
    print("| --- | --- | --- | --- |")
    for name, case, ms, n in rows:
        print(f"| {name} | {case} | {ms:.2f} | {n} |")


if __name__ == "__main__":
    main()
