"""The conformance suite's coroutine part: ``async def`` tasks on a backend (``docs/async.md``).

:class:`~flask_longtask.testing.BackendConformance` inherits these tests; run them by subclassing
it, not this class (its ``app`` and ``backend`` fixtures are there). The tasks live here, at
module level, so that worker processes find them by name.
"""

from __future__ import annotations

import asyncio
import os
import time
import typing as t
from pathlib import Path

import pytest
from flask import Flask, current_app

from ._conformance import _MARK, TIMEOUT, _lines, _until, longtask
from .exceptions import JobCancelledError, JobFailedError
from .job import JobStatus
from .worker import current_job


def _log(path: str, line: str) -> None:
    with open(path, "a") as f:
        f.write(line + "\n")


async def _gate(path: str) -> None:
    """Wait (on the loop) for the file ``path``."""
    deadline = time.monotonic() + TIMEOUT
    while not os.path.exists(path):
        if time.monotonic() > deadline:
            raise TimeoutError(f"gate {path} never opened")
        await asyncio.sleep(0.005)


@longtask.task
async def co_steps(n: int, gate: str) -> tuple[t.Any, str | None]:
    for i in range(1, n + 1):
        current_job.set_progress((i, n))
        await asyncio.sleep(0)
    await _gate(gate)
    return current_app.config[_MARK], current_job.id


@longtask.task
async def co_fail(message: str) -> None:
    await asyncio.sleep(0)
    raise ValueError(message)


@longtask.task(cache_by=[])
async def co_memo(value: int, log: str) -> int:
    _log(log, f"memo {value}")
    await asyncio.sleep(0)
    return value


@longtask.task
async def co_sleeper(log: str) -> str:
    """Blocked in ``await asyncio.sleep(30)``; its ``finally`` runs when it is cancelled."""
    _log(log, "started")
    try:
        await asyncio.sleep(30)
    finally:
        _log(log, "cleanup")
    return "slept"


@longtask.task
async def co_stubborn(log: str, stop: str, beat: str) -> str:
    """Swallows the CancelledError and goes on (until ``stop`` exists), touching ``beat`` every
    10 ms: its side effect, which goes on as long as it runs."""
    _log(log, "started")
    while not os.path.exists(stop):
        Path(beat).touch()
        try:
            await asyncio.sleep(0.01)
        except asyncio.CancelledError:
            _log(log, "swallowed")
    return "went on"


@longtask.task(time_limit=0.3)
async def co_limited(log: str) -> str:
    try:
        await asyncio.sleep(30)
    finally:
        _log(log, "cleanup")
    return "slept"


@longtask.task(retries=1, retry_backoff=0.01, retry_on=ConnectionError)
async def co_flaky(log: str) -> int:
    _log(log, "attempt")
    await asyncio.sleep(0)
    seen = len(_lines(Path(log)))
    if seen == 1:
        raise ConnectionError("the first attempt fails")
    return seen


@longtask.task
async def co_tagged(tag: int, steps: int) -> list[t.Any]:
    """Sets progress ``(tag, i)`` between awaits; returns what it saw of ``current_job``."""
    me = current_job.id
    seen = set()
    for i in range(steps):
        current_job.set_progress((tag, i))
        await asyncio.sleep(0.002)
        seen.add((current_job.id, current_job.progress[0]))
    return [me, sorted(seen)]


#: How soon (seconds) a coroutine that swallows its cancel stops after its job has ended, on a
#: backend that stops such coroutines by force.
STOPPED_WITHIN = 10.0


class CoroutineConformance:
    """``async def`` tasks: results, progress, the app context, errors, memoization, retries,
    cancellation delivered as ``CancelledError``, time limits, and concurrent jobs' contexts."""

    #: Whether the backend stops by force a coroutine that swallows its cancel (its process
    #: exits once the grace has passed): then its side effects are checked to stop. ``False``
    #: where it is left running, cooperative as sync jobs are there (ThreadBackend, Celery's
    #: threads pool); the job ends at the grace's end either way.
    stops_stubborn_coroutines: bool = False

    def test_coroutine_result_progress_and_app_context(self, app: Flask, tmp_path: Path) -> None:
        gate = tmp_path / "gate"
        job = co_steps.submit(5, str(gate))
        _until(lambda: job.progress == (5, 5), "the coroutine's last progress while it waits")
        assert job.status is JobStatus.RUNNING
        gate.touch()
        assert job.result(timeout=TIMEOUT) == ("conformance-app", job.id)
        assert job.progress == (5, 5)

    def test_coroutine_error_fails_the_job(self, app: Flask) -> None:
        job = co_fail.submit("async kaboom")
        with pytest.raises(JobFailedError) as info:
            job.result(timeout=TIMEOUT)
        assert job.error is not None and job.error["type"] == "ValueError"
        assert "async kaboom" in str(info.value)

    def test_coroutine_result_is_memoized(self, app: Flask, tmp_path: Path) -> None:
        log = tmp_path / "log"
        first = co_memo.submit(1, str(log))
        assert first.result(timeout=TIMEOUT) == 1
        assert co_memo.submit(1, str(log)) == first
        assert co_memo.submit(2, str(log)).result(timeout=TIMEOUT) == 2
        assert _lines(log) == ["memo 1", "memo 2"]

    def test_coroutine_retried(self, app: Flask, tmp_path: Path) -> None:
        job = co_flaky.submit(str(tmp_path / "log"))
        assert job.result(timeout=TIMEOUT) == 2
        assert job.attempt == 2

    def test_cancel_reaches_a_coroutine_at_its_await(self, app: Flask, tmp_path: Path) -> None:
        log = tmp_path / "log"
        job = co_sleeper.submit(str(log))
        _until(lambda: _lines(log) == ["started"], "the coroutine to start")
        began = time.monotonic()
        job.cancel()
        assert job.wait(timeout=TIMEOUT) is JobStatus.CANCELLED
        took = time.monotonic() - began
        # Its finally ran: it was delivered CancelledError in its asyncio.sleep(30), not left
        # to itself at the grace's end. The ticker looks at the flag every progress interval
        # (10 ms here): a second is generous on a loaded machine, and 30 times under the sleep.
        assert _lines(log) == ["started", "cleanup"]
        assert took < 1.0, took
        with pytest.raises(JobCancelledError):
            job.result()

    def test_a_coroutine_that_swallows_the_cancel_is_stopped_after_the_grace(self, app: Flask, tmp_path: Path) -> None:
        log, stop, beat = tmp_path / "log", tmp_path / "stop", tmp_path / "beat"
        grace = float(app.config["LONGTASK_CANCEL_GRACE"])  # (0.5 s: the workers' default too)
        job = co_stubborn.submit(str(log), str(stop), str(beat))
        _until(lambda: _lines(log) == ["started"], "the coroutine to start")
        try:
            began = time.monotonic()
            job.cancel()
            assert job.wait(timeout=TIMEOUT) is JobStatus.CANCELLED
            took = time.monotonic() - began
            assert took < grace + 1.0, took  # the job ends at the grace's end, whatever it does
            assert "swallowed" in _lines(log)
            if self.stops_stubborn_coroutines:
                # Stopped by force: its side effects stop (it has no neighbours on its worker, so
                # nothing to wait for). Quiet for a second, while it touched the file every 10 ms.
                _until(
                    lambda: time.time() - beat.stat().st_mtime > 1.0,
                    "the coroutine to be stopped (its side effect to stop)",
                    timeout=STOPPED_WITHIN,
                )
        finally:
            stop.touch()  # (where it was left to itself: let it end)

    def test_time_limit_reaches_a_coroutine(self, app: Flask, tmp_path: Path) -> None:
        log = tmp_path / "log"
        job = co_limited.submit(str(log))
        with pytest.raises(JobFailedError):
            job.result(timeout=TIMEOUT)
        assert job.error is not None and job.error["type"] == "TimeLimitExceeded"
        _until(lambda: _lines(log) == ["cleanup"], "its finally")

    def test_concurrent_coroutines_never_see_each_others_job(self, app: Flask) -> None:
        jobs = [co_tagged.submit(tag, 25) for tag in range(12)]
        for tag, job in enumerate(jobs):
            assert job.result(timeout=TIMEOUT) == [job.id, [(job.id, tag)]]
            assert job.progress == (tag, 24)

    def test_a_batch_of_coroutine_jobs(self, app: Flask) -> None:
        jobs = co_tagged.submit_many(range(12), [5] * 12)  # (Task.submit_many: one batch)
        for tag, job in enumerate(jobs):
            assert job.result(timeout=TIMEOUT) == [job.id, [(job.id, tag)]]

    def test_inline_call_of_a_coroutine_task(self, app: Flask, tmp_path: Path) -> None:
        log = tmp_path / "log"
        assert co_memo(7, str(log)) == 7  # run to its end on a loop of its own, no job
        assert _lines(log) == ["memo 7"]

        async def inside_a_loop() -> None:
            with pytest.raises(RuntimeError, match="inside a running event loop"):
                co_memo(8, str(log))

        asyncio.run(inside_a_loop())
