"""Module-level coroutine tasks for the pool's own tests (tests/test_async.py): worker processes
import them by name. The coroutine cases every backend runs are in flask_longtask/testing_async.py."""

from __future__ import annotations

import asyncio
import os
import time

from flask import Flask

from flask_longtask import LongTask, current_job
from flask_longtask.backends import ThreadBackend

longtask = LongTask()
# The app jobs run in inside a worker process: a 2 s heartbeat timeout (a beat every 0.5 s), so
# that a job whose coroutine blocks its loop is found lost soon.
app = Flask(__name__)
app.config.update(LONGTASK_HEARTBEAT_TIMEOUT=2.0, LONGTASK_PROGRESS_INTERVAL=0.01, LONGTASK_CANCEL_GRACE=0.5)
longtask.init_app(app, backend=ThreadBackend(workers=1))


@longtask.task
async def nap(seconds: float) -> int:
    """Waits on the loop; returns its worker's pid."""
    await asyncio.sleep(seconds)
    return os.getpid()


@longtask.task
def sync_pid() -> int:
    return os.getpid()


@longtask.task
async def hog(log: str, seconds: float) -> str:
    """Blocks its loop (the user's bug): ``time.sleep`` inside a coroutine."""
    with open(log, "a") as f:
        f.write(f"hog {os.getpid()}\n")
    time.sleep(seconds)
    return "woke"


@longtask.task
async def progress_then_nap(seconds: float) -> str | None:
    current_job.set_progress("napping")
    await asyncio.sleep(seconds)
    return current_job.id


@longtask.task
async def wait_gate(gate: str) -> int:
    while not os.path.exists(gate):
        await asyncio.sleep(0.005)
    return os.getpid()


@longtask.task
async def measure(payload: str, seconds: float) -> int:
    """Waits on the loop; returns the length of what it was given."""
    await asyncio.sleep(seconds)
    return len(payload)


@longtask.task
async def exits() -> None:
    """Raises SystemExit on the loop, as a sync job may in its worker."""
    await asyncio.sleep(0)
    raise SystemExit(3)


@longtask.task
async def stubborn(log: str) -> str:
    """Swallows every cancel and goes on, appending a line to ``log`` every 20 ms (its side
    effect), for a minute."""
    end = time.monotonic() + 60
    while time.monotonic() < end:
        with open(log, "a") as f:
            f.write(f"{os.getpid()}\n")
        try:
            await asyncio.sleep(0.02)
        except asyncio.CancelledError:
            pass
    return "done"


@longtask.task
def sync_gate(gate: str) -> int:
    """A sync job that waits (not burning CPU) until ``gate`` exists; returns its worker's pid."""
    while not os.path.exists(gate):
        time.sleep(0.005)
    return os.getpid()


@longtask.task
async def cancel_job(directory: str, job_id: str) -> str:
    """Cancels another job of the pool of ``directory`` from a worker of coroutine jobs; returns
    its status then."""
    from flask_longtask.backends.diskcache import DiskcacheBackend

    backend = DiskcacheBackend(directory, embedded=False)
    other = Flask("tests.async_jobs_canceller")
    longtask.init_app(other, backend=backend)
    try:
        with other.app_context():
            job = longtask.get_job(job_id)
            job.cancel()
            return job.status.value
    finally:
        backend.close()
