"""``flask longtask worker`` as an operator sees it: which process hosts the pool, which stands
by, and a clean shutdown that logs no worker deaths (issue 22). Real processes, real pools."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

from flask import Flask

from flask_longtask.backends.diskcache import DiskcacheBackend
from tests import diskcache_jobs as jobs
from tests.helpers import wait_for
from tests.services import ROOT
from tests.test_diskcache_procs import BIN, env_for, stop


def start_worker(directory: Path, log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        return subprocess.Popen(
            [str(BIN / "flask"), "--app", "tests.apps.diskcache_app", "longtask", "worker"],
            cwd=ROOT,
            env=env_for(directory, LONGTASK_WORKERS="1", LONGTASK_EMBEDDED_WORKER="0"),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # (its own process group, as under systemd or in a terminal)
        )


def test_standby_and_hosting_lines_and_a_clean_shutdown(tmp_path: Path) -> None:
    directory = tmp_path / "lt"
    log1, log2 = tmp_path / "first.log", tmp_path / "second.log"
    first = start_worker(directory, log1)
    second = None
    web_backend = DiskcacheBackend(directory, embedded=False)
    web = Flask("tests.web")
    jobs.longtask.init_app(web, backend=web_backend)
    try:
        hosting = f"Worker pool for {directory}: hosting the pool (pid {first.pid}), 1 workers"
        wait_for(lambda: hosting in log1.read_text(), 30, "the first to host the pool")
        second = start_worker(directory, log2)
        standing = f"Worker pool for {directory}: standing by for the pool held by pid {first.pid}"
        wait_for(lambda: standing in log2.read_text(), 30, "the second to stand by")
        assert "hosting the pool" not in log2.read_text()
        with web.app_context():
            assert jobs.add.submit(1, 2).result(timeout=30) == 3

            # systemd's stop: SIGTERM to every process of the group (the workers, the fork server).
            os.killpg(first.pid, signal.SIGTERM)
            assert first.wait(30) == 0
            took_over = f"Worker pool for {directory}: hosting the pool (pid {second.pid})"
            wait_for(lambda: took_over in log2.read_text(), 30, "the second to take over")
            assert jobs.add.submit(2, 3).result(timeout=30) == 5

        os.killpg(second.pid, signal.SIGINT)  # Ctrl+C in its terminal
        assert second.wait(30) == 0
        for log in (log1, log2):
            text = log.read_text()
            assert "died" not in text and "Traceback" not in text, text
    finally:
        for proc in (first, second):
            if proc is not None:
                stop(proc)
        web_backend.close()
