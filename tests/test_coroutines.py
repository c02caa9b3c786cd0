"""Coroutine jobs' core (flask_longtask/coroutines.py) on ThreadBackend, with real threads and
a real event loop: what a coroutine may do to the process's loop (SystemExit, blocking inside a
child task, swallowing its cancel), and the loop at exit and across a fork."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import textwrap
import time
import typing as t
from pathlib import Path

import pytest
from flask import Flask

from flask_longtask import JobStatus, LongTask, TimeLimitExceeded
from flask_longtask.backends import ThreadBackend

from .helpers import wait_for

TIMEOUT = 30.0
ROOT = Path(__file__).resolve().parent.parent


def _lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


def _log(path: Path, line: str) -> None:
    with open(path, "a") as f:
        f.write(line + "\n")


@pytest.fixture
def longtask() -> t.Iterator[LongTask]:
    backend = ThreadBackend(workers=2)
    app = Flask("tests.coroutines")
    app.config.update(
        TESTING=True, LONGTASK_PROGRESS_INTERVAL=0.01, LONGTASK_CANCEL_GRACE=0.3, LONGTASK_HEARTBEAT_TIMEOUT=1.0
    )
    longtask = LongTask(app, backend=backend)
    with app.app_context():
        yield longtask
    backend.close()


async def _until_file(path: Path) -> None:
    deadline = time.monotonic() + TIMEOUT
    while not path.exists() and time.monotonic() < deadline:
        await asyncio.sleep(0.005)


@pytest.mark.parametrize("raised", [SystemExit, KeyboardInterrupt])
def test_a_coroutine_that_raises_systemexit_fails_its_job_and_the_loop_runs_on(
    longtask: LongTask, tmp_path: Path, raised: type[BaseException]
) -> None:
    gate = tmp_path / "gate"

    @longtask.task
    async def neighbour() -> str:
        await _until_file(gate)
        return "neighbour"

    @longtask.task
    async def leaves() -> None:
        await asyncio.sleep(0)
        raise raised(3)

    @longtask.task
    async def leaves_from_a_child() -> None:
        async def child() -> None:
            raise raised(4)

        await asyncio.gather(child())  # (asyncio raises it out of the loop, from the child's task)

    @longtask.task
    async def later() -> str:
        await asyncio.sleep(0)
        return "later"

    waiting = neighbour.submit()
    for task in (leaves, leaves_from_a_child):
        job = task.submit()
        # As a sync job that raises it: the job fails with it, nothing else ends.
        assert job.wait(timeout=TIMEOUT) is JobStatus.FAILED
        assert job.error is not None and job.error["type"] == raised.__name__
    assert waiting.status is JobStatus.RUNNING
    gate.touch()
    assert waiting.result(timeout=TIMEOUT) == "neighbour"
    assert later.submit().result(timeout=TIMEOUT) == "later"


def test_a_coroutine_job_runs_after_the_process_loop_was_closed(longtask: LongTask) -> None:
    from flask_longtask import coroutines

    @longtask.task
    async def nap() -> str:
        await asyncio.sleep(0)
        return "ran"

    assert nap.submit().result(timeout=TIMEOUT) == "ran"
    old = coroutines.shared()
    old.close()  # its thread has ended: the next job starts another loop
    assert nap.submit().result(timeout=TIMEOUT) == "ran"
    assert coroutines.shared() is not old and coroutines.shared().thread.is_alive()


def test_a_time_limited_coroutine_that_swallows_its_cancel_is_not_retried_while_it_runs(
    longtask: LongTask, tmp_path: Path
) -> None:
    log, stop = tmp_path / "log", tmp_path / "stop"

    @longtask.task(time_limit=0.3, retries=1, retry_backoff=0.01, retry_on=(TimeLimitExceeded,))
    async def stubborn() -> str:
        _log(log, "start")
        while not stop.exists():
            try:
                await asyncio.sleep(0.01)
            except asyncio.CancelledError:
                pass  # the user's bug: it goes on
        _log(log, "end")
        return "went on"

    job = stubborn.submit()
    try:
        # It ends as it would without a retry: a second attempt would run beside the first.
        assert job.wait(timeout=TIMEOUT) is JobStatus.FAILED
        assert job.attempt == 1
        assert job.error is not None and job.error["type"] == "TimeLimitExceeded"
        assert "it went on" in job.error["message"] and "left running" in job.error["message"]
        assert _lines(log) == ["start"]
    finally:
        stop.touch()
    wait_for(lambda: "end" in _lines(log), TIMEOUT, "the first attempt's coroutine to end")
    assert _lines(log) == ["start", "end"]
    assert job.status is JobStatus.FAILED and job.attempt == 1


@pytest.mark.parametrize("blocks", [True, False])
def test_a_coroutine_that_outlives_its_grace_is_said_to_block_the_loop_only_when_it_does(
    longtask: LongTask, tmp_path: Path, blocks: bool
) -> None:
    log, stop = tmp_path / "log", tmp_path / "stop"

    @longtask.task(time_limit=0.3)
    async def cleanup_too_long() -> None:
        _log(log, "start")
        try:
            await asyncio.sleep(TIMEOUT)
        except asyncio.CancelledError:
            # After the cancel: blocking cleanup (the loop stops), or a slow one that awaits.
            while not stop.exists():
                if blocks:
                    time.sleep(0.01)
                else:
                    await asyncio.sleep(0.01)

    job = cleanup_too_long.submit()
    try:
        assert job.wait(timeout=TIMEOUT) is JobStatus.FAILED
        assert job.error is not None and job.error["type"] == "TimeLimitExceeded"
        why = "it blocked the event loop" if blocks else "it went on"
        assert why in job.error["message"], job.error["message"]
    finally:
        stop.touch()


def test_a_coroutine_that_blocks_inside_a_child_task_loses_its_heartbeat_not_its_neighbours(
    longtask: LongTask, tmp_path: Path
) -> None:
    log, stop = tmp_path / "log", tmp_path / "stop"

    @longtask.task
    async def neighbour() -> str:
        _log(log, "neighbour")
        await _until_file(stop)
        return "neighbour"

    @longtask.task
    async def hog() -> str:
        async def blocking() -> None:
            while not stop.exists():  # the user's bug: time.sleep on the loop, in a child task
                time.sleep(0.01)

        await asyncio.gather(blocking())
        return "hog"

    waiting = neighbour.submit()
    wait_for(lambda: _lines(log) == ["neighbour"], TIMEOUT, "the neighbour to start")
    try:
        blocker = hog.submit()
        # Its heartbeat stops (1 s timeout here): a reader finds it lost; the neighbour, which
        # waits for the loop, beats on.
        wait_for(lambda: blocker.status is JobStatus.FAILED, TIMEOUT, "the hog found lost")
        assert blocker.error is not None and blocker.error["type"] == "WorkerLostError"
        assert waiting.status is JobStatus.RUNNING
    finally:
        stop.touch()
    assert waiting.result(timeout=TIMEOUT) == "neighbour"
    assert blocker.status is JobStatus.FAILED


def _run_script(tmp_path: Path, script: str, **env: str) -> subprocess.CompletedProcess[str]:
    path = tmp_path / "script.py"
    path.write_text(textwrap.dedent(script))
    environ = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]), **env}
    return subprocess.run(
        [sys.executable, "-X", "dev", str(path), str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
        env=environ,
        cwd=tmp_path,
    )


def test_a_coroutine_left_running_at_exit_is_cancelled_on_its_loop(tmp_path: Path) -> None:
    done = _run_script(
        tmp_path,
        """
        import asyncio, logging, sys, time
        from pathlib import Path
        from flask import Flask
        from flask_longtask import LongTask
        from flask_longtask.backends import ThreadBackend

        logging.basicConfig(level=logging.ERROR)
        log = Path(sys.argv[1]) / "log"
        app = Flask("exiting")
        backend = ThreadBackend(workers=1)
        longtask = LongTask(app, backend=backend)
        kept = set()

        async def in_the_background() -> None:
            with open(log, "a") as f:
                f.write("start\\n")
            try:
                await asyncio.sleep(60)
            finally:  # on its loop, cancelled (not closed by the garbage collector, loop gone)
                with open(log, "a") as f:
                    f.write(f"finally {asyncio.get_running_loop().is_running()}\\n")

        @longtask.task
        async def leaves_a_task_behind() -> str:
            kept.add(asyncio.create_task(in_the_background()))
            return "returned"

        with app.app_context():
            assert leaves_a_task_behind.submit().result(timeout=30) == "returned"
        deadline = time.monotonic() + 30
        while not log.exists() and time.monotonic() < deadline:
            time.sleep(0.01)
        backend.close()
        """,
        PYTHONWARNINGS="error",
    )
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "log").read_text().splitlines() == ["start", "finally True"]
    for trouble in ("Task was destroyed", "Exception ignored", "Warning", "Traceback"):
        assert trouble not in done.stderr, done.stderr


def test_a_forked_child_starts_a_loop_of_its_own(tmp_path: Path) -> None:
    done = _run_script(
        tmp_path,
        """
        import asyncio, os, signal, threading, warnings
        from flask_longtask import coroutines

        warnings.simplefilter("ignore", DeprecationWarning)  # (fork() of a process with threads)
        parent = coroutines.shared()
        held, release = threading.Event(), threading.Event()

        def starting_a_loop() -> None:  # another thread, in shared(), as the process forks
            with coroutines._shared_lock:
                held.set()
                release.wait()

        threading.Thread(target=starting_a_loop).start()
        held.wait()
        pid = os.fork()
        if pid == 0:
            signal.alarm(20)
            loop = coroutines.shared()
            ran = asyncio.run_coroutine_threadsafe(asyncio.sleep(0, "ran"), loop.loop).result(10)
            os._exit(0 if loop is not parent and ran == "ran" else 1)
        release.set()
        print("child", os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]))
        """,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["child", "0"], done.stdout + done.stderr
