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


def start_redis(tmp: Path, *, port: int | None = None, durable: bool = False) -> tuple[subprocess.Popen[bytes], str]:
    """A redis-server on loopback keeping its files in ``tmp``. ``durable``: with its append-only
    file (``appendonly yes``), so that a clean stop and a start on the same ``port`` and ``tmp``
    (see :func:`restart_redis`) find every key again, as a production Redis should."""
    exe = shutil.which("redis-server")
    if exe is None:
        pytest.skip("redis-server is not installed (scripts/test installs it)")
    port = port or free_port()
    persistence = ["--appendonly", "yes"] if durable else ["--appendonly", "no"]
    with open(tmp / "redis.log", "ab") as log:  # the child keeps its own copy of the fd
        proc = subprocess.Popen(
            [exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "", *persistence, "--dir", str(tmp)],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    url = f"redis://127.0.0.1:{port}/0"
    import redis

    client = redis.Redis.from_url(url)
    try:
        wait_until(client.ping, 20, "redis-server to answer PING")  # (not while it loads its data)
    finally:
        client.close()
    return proc, url


def stop_redis(proc: subprocess.Popen[bytes], timeout: float = 10) -> None:
    """Stop a redis-server cleanly (SIGTERM: a durable one writes its append-only file out first)."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(proc.pid, signal.SIGTERM)
    proc.wait(timeout)


def restart_redis(proc: subprocess.Popen[bytes], tmp: Path, url: str) -> subprocess.Popen[bytes]:
    """A clean restart of a durable redis-server (:func:`start_redis`): stopped, then started
    again on the same port with the same files. Returns the new process."""
    stop_redis(proc)
    port = int(url.rsplit(":", 1)[1].split("/")[0])
    return start_redis(tmp, port=port, durable=True)[0]


def start_celery_worker(
    app_path: str,
    redis_url: str,
    log_path: Path,
    concurrency: int = 2,
    *,
    prefetch: int = 1,
    env: t.Mapping[str, str] | None = None,
    name: str = "w",
    pool: str = "prefork",
) -> subprocess.Popen[bytes]:
    """A Celery worker (prefork) for ``app_path``; ``prefetch``: its ``--prefetch-multiplier``;
    ``env``: more environment variables (tests/celery_app.py reads its app's settings from
    ``LONGTASK_TEST_CONFIG_*``); ``name``: its node name's start (this process's id follows);
    ``pool``: its ``--pool``."""
    env = {**os.environ, "LONGTASK_TEST_REDIS_URL": redis_url, "PYTHONPATH": str(ROOT), **(env or {})}
    cmd = [
        sys.executable, "-m", "celery", "-A", app_path, "worker", f"--pool={pool}",
        f"--concurrency={concurrency}", "--without-heartbeat", "--without-gossip", "--without-mingle",
        f"--prefetch-multiplier={prefetch}", "--loglevel=INFO", "-n", f"{name}{os.getpid()}@%h",
    ]  # fmt: skip
    with open(log_path, "wb") as log:
        return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
