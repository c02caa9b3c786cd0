"""Real services for tests: a redis-server and Celery worker processes on loopback."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import typing as t
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until(condition: t.Callable[[], t.Any], timeout: float, what: str) -> t.Any:
    deadline = time.monotonic() + timeout
    while True:
        try:
            value = condition()
        except Exception:
            value = None
        if value:
            return value
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.05)


def stop(proc: subprocess.Popen[bytes], timeout: float = 10) -> None:
    """Stop a server and its whole process group; never leave children behind.

    SIGINT to the server first, so it exits as after Ctrl-C (its ``atexit`` handlers run: it
    closes its backend, and coverage saves what it measured); then SIGTERM to the group, then
    SIGKILL to whatever is left.
    """
    for sig, target, wait in ((signal.SIGINT, proc.pid, timeout / 2), (signal.SIGTERM, -proc.pid, timeout / 2)):
        if proc.poll() is not None:
            break
        with contextlib.suppress(ProcessLookupError):
            os.kill(target, sig)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(wait)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout)


def start_redis(tmp: Path) -> tuple[subprocess.Popen[bytes], str]:
    exe = shutil.which("redis-server")
    if exe is None:
        pytest.skip("redis-server is not installed (scripts/test installs it)")
    port = free_port()
    with open(tmp / "redis.log", "wb") as log:  # the child keeps its own copy of the fd
        proc = subprocess.Popen(
            [exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", str(tmp)],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    url = f"redis://127.0.0.1:{port}/0"
    import redis

    client = redis.Redis.from_url(url)
    wait_until(client.ping, 20, "redis-server to answer PING")
    client.close()
    return proc, url


def start_celery_worker(app_path: str, redis_url: str, log_path: Path, concurrency: int = 2) -> subprocess.Popen[bytes]:
    env = {**os.environ, "LONGTASK_TEST_REDIS_URL": redis_url, "PYTHONPATH": str(ROOT)}
    cmd = [
        sys.executable, "-m", "celery", "-A", app_path, "worker", "--pool=prefork",
        f"--concurrency={concurrency}", "--without-heartbeat", "--without-gossip", "--without-mingle",
        "--prefetch-multiplier=1", "--loglevel=INFO", "-n", f"w{os.getpid()}@%h",
    ]  # fmt: skip
    with open(log_path, "wb") as log:
        return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
