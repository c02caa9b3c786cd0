"""Flask-LongTask's CeleryBackend vs Dash's CeleryManager vs a raw Celery round trip.

Starts a real redis-server and one prefork Celery worker (2 processes) that imports
``benchmarks/celery_bench_app.py``, so every contender runs on the same Redis and the same
worker in the same run, one sample of each in turn. Each contender waits for its result the way
an app would: ours with ``Job.result()``, raw Celery with ``AsyncResult.get()``, Dash's manager
(which has no wait) polled with ``result_ready()`` on ``Job.wait``'s polling schedule; and, for
comparison, every contender polled every 1 ms. Prints medians and the ratios the project's
targets are stated in.

    python -m benchmarks.bench_celery [--runs 100]
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import tempfile
import time
import typing as t
import uuid
from pathlib import Path

from tests.services import start_celery_worker, start_redis, stop, wait_until

#: Seconds between samples, so that each starts with an idle worker.
_SETTLE = 0.02


def _job_wait_schedule() -> t.Iterator[float]:
    """The pauses ``Job.wait`` makes on a backend that cannot wake it: 0.25 ms for the first
    10 ms, then a tenth of the time waited so far, at most 50 ms."""
    start = time.monotonic()
    while True:
        waited = time.monotonic() - start
        yield 0.00025 if waited < 0.01 else min(0.05, waited / 10)


def _poll(done, pauses: t.Iterator[float] | None = None, timeout: float = 30.0) -> None:  # type: ignore[no-untyped-def]
    """Call ``done()`` until it is true: every 1 ms, or with the given pauses."""
    deadline = time.monotonic() + timeout
    while not done():
        if time.monotonic() > deadline:
            raise TimeoutError("job did not finish")
        time.sleep(0.001 if pauses is None else next(pauses))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=100)
    runs = parser.parse_args().runs

    tmp = Path(tempfile.mkdtemp(prefix="lt-bench-celery-"))
    redis_proc, url = start_redis(tmp)
    os.environ["LONGTASK_TEST_REDIS_URL"] = url
    worker = start_celery_worker("benchmarks.celery_bench_app:celery_app", url, tmp / "worker.log")
    try:
        from benchmarks import celery_bench_app as m

        wait_until(lambda: m.celery_app.control.ping(timeout=0.5), 60, "the Celery worker")

        def ours(task, polled: bool):  # type: ignore[no-untyped-def]
            def run() -> None:
                job = task.submit()
                if polled:
                    _poll(lambda: job.status.is_finished)
                job.result()  # waits on its own: woken by the job's end (BLMOVE on Redis)

            return run

        def dash(job_fn, polled: bool):  # type: ignore[no-untyped-def]
            def run() -> None:
                key = uuid.uuid4().hex
                job = m.dash_manager.call_job_fn(key, job_fn, [], {})
                # Dash's manager has no wait: the renderer polls result_ready(). Polled here on
                # Job.wait's schedule for pollers (0.25 ms for 10 ms, then backing off).
                _poll(lambda: m.dash_manager.result_ready(key), None if polled else _job_wait_schedule())
                m.dash_manager.get_result(key, job)

            return run

        def raw(polled: bool):  # type: ignore[no-untyped-def]
            def run() -> None:
                result = m.raw_noop.delay()
                if polled:
                    _poll(result.ready)
                result.get()  # Celery's own wait: a pub/sub message from the Redis result backend

            return run

        cases = {
            "raw Celery round trip (no-op)": raw(False),
            "Dash CeleryManager, no-op": dash(m.dash_noop, False),
            "Flask-LongTask, no-op": ours(m.noop, False),
            "Dash CeleryManager, 100 progress updates": dash(m.dash_progress, False),
            "Flask-LongTask, 100 progress updates": ours(m.progress100, False),
            "polled: raw Celery (no-op)": raw(True),
            "polled: Dash CeleryManager, no-op": dash(m.dash_noop, True),
            "polled: Flask-LongTask, no-op": ours(m.noop, True),
        }
        samples: dict[str, list[float]] = {name: [] for name in cases}
        with m.app.app_context():
            for run in cases.values():
                for _ in range(5):  # warm up
                    run()
            # Round robin: one sample of each case per round, so a slow patch of the machine
            # (it is shared) weighs on every case alike instead of on whichever ran then. The
            # order is shuffled each round, and each sample starts after a pause: the worker
            # is still busy after some samples (Dash's get_result() broadcasts a revoke, which
            # the worker handles after the result is back), and a fixed order made the case
            # after Dash's pay for it every time.
            rng = random.Random(0)
            order = list(cases.items())
            for _ in range(runs):
                rng.shuffle(order)
                for name, run in order:
                    time.sleep(_SETTLE)
                    start = time.perf_counter()
                    run()
                    samples[name].append(time.perf_counter() - start)
        results = {name: statistics.median(values) * 1000 for name, values in samples.items()}
    finally:
        stop(worker)
        stop(redis_proc)

    print(f"\nSubmit-to-result, median of {runs} (ms); same Redis, same worker, same run\n")
    print("Each waits its own way: `Job.result()`, Celery's `AsyncResult.get()`, and Dash's")
    print('`result_ready()` polled on Job.wait\'s schedule. "polled": every contender polled every 1 ms.\n')
    print("| case | median ms |")
    print("| --- | ---: |")
    for name, ms in results.items():
        print(f"| {name} | {ms:.2f} |")

    def ratio(a: str, b: str) -> str:
        return f"{results[a] / results[b]:.2f}"

    print("\n| ratio | value | target |")
    print("| --- | ---: | --- |")
    print(f"| ours / Dash, no-op | {ratio('Flask-LongTask, no-op', 'Dash CeleryManager, no-op')} | <= 1.0 |")
    print(
        "| ours / Dash, 100 progress updates |"
        f" {ratio('Flask-LongTask, 100 progress updates', 'Dash CeleryManager, 100 progress updates')} | <= 1.0 |"
    )
    print(f"| ours / raw Celery, no-op | {ratio('Flask-LongTask, no-op', 'raw Celery round trip (no-op)')} | <= 2.0 |")
    print(
        "| polled every 1 ms: ours / Dash, no-op |"
        f" {ratio('polled: Flask-LongTask, no-op', 'polled: Dash CeleryManager, no-op')} | <= 1.0 |"
    )
    print(
        "| polled every 1 ms: ours / raw Celery, no-op |"
        f" {ratio('polled: Flask-LongTask, no-op', 'polled: raw Celery (no-op)')} | <= 2.0 |"
    )


if __name__ == "__main__":
    main()
