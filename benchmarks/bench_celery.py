"""Flask-LongTask's CeleryBackend vs Dash's CeleryManager vs a raw Celery round trip.

Starts a real redis-server and one prefork Celery worker (2 processes) that imports
``benchmarks/celery_bench_app.py``, so every contender runs on the same Redis and the same
worker in the same run, one sample of each in turn. Each contender is polled the same way
(every 1 ms until done), then its result is read. Prints medians and the ratios the project's
targets are stated in.

    python -m benchmarks.bench_celery [--runs 100]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
import uuid
from pathlib import Path

from tests.services import start_celery_worker, start_redis, stop, wait_until


def _poll(done, timeout: float = 30.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not done():
        if time.monotonic() > deadline:
            raise TimeoutError("job did not finish")
        time.sleep(0.001)


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

        def ours(task):  # type: ignore[no-untyped-def]
            def run() -> None:
                job = task.submit()
                _poll(lambda: job.status.is_finished)
                job.result()

            return run

        def dash(job_fn):  # type: ignore[no-untyped-def]
            def run() -> None:
                key = uuid.uuid4().hex
                job = m.dash_manager.call_job_fn(key, job_fn, [], {})
                _poll(lambda: m.dash_manager.result_ready(key))
                m.dash_manager.get_result(key, job)

            return run

        def raw() -> None:
            result = m.raw_noop.delay()
            _poll(result.ready)
            result.get()

        cases = {
            "raw Celery round trip (no-op)": raw,
            "Dash CeleryManager, no-op": dash(m.dash_noop),
            "Flask-LongTask, no-op": ours(m.noop),
            "Dash CeleryManager, 100 progress updates": dash(m.dash_progress),
            "Flask-LongTask, 100 progress updates": ours(m.progress100),
        }
        samples: dict[str, list[float]] = {name: [] for name in cases}
        with m.app.app_context():
            for run in cases.values():
                for _ in range(5):  # warm up
                    run()
            # Round robin: one sample of each case per round, so a slow patch of the machine
            # (it is shared) weighs on every case alike instead of on whichever ran then.
            for _ in range(runs):
                for name, run in cases.items():
                    start = time.perf_counter()
                    run()
                    samples[name].append(time.perf_counter() - start)
        results = {name: statistics.median(values) * 1000 for name, values in samples.items()}
    finally:
        stop(worker)
        stop(redis_proc)

    print(f"\nSubmit-to-result, median of {runs} (ms); same Redis, same worker, same run\n")
    print("| case | median ms |")
    print("| --- | ---: |")
    for name, ms in results.items():
        print(f"| {name} | {ms:.2f} |")
    noop_ratio = results["Flask-LongTask, no-op"] / results["Dash CeleryManager, no-op"]
    prog_ratio = results["Flask-LongTask, 100 progress updates"] / results["Dash CeleryManager, 100 progress updates"]
    raw_ratio = results["Flask-LongTask, no-op"] / results["raw Celery round trip (no-op)"]
    print("\n| ratio | value | target |")
    print("| --- | ---: | --- |")
    print(f"| ours / Dash, no-op | {noop_ratio:.2f} | <= 1.0 |")
    print(f"| ours / Dash, 100 progress updates | {prog_ratio:.2f} | <= 1.0 |")
    print(f"| ours / raw Celery, no-op | {raw_ratio:.2f} | <= 2.0 |")


if __name__ == "__main__":
    main()
