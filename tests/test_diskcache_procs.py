"""DiskcacheBackend across real processes: gunicorn with 4 workers, ``flask longtask worker``.

Each test owns its directory (``tmp_path``) and a free port, so pytest-xdist may run them side
by side.
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import subprocess
import sys
import typing as t
from pathlib import Path

from flask import Flask

from flask_longtask import JobStatus
from flask_longtask.backends.diskcache import DiskcacheBackend
from flask_longtask.store import keys
from tests import diskcache_jobs as jobs
from tests.helpers import alive, wait_for
from tests.services import ROOT, free_port

BIN = Path(sys.executable).parent


def parent_of(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


def children_of(pid: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry))
    return found


def env_for(directory: Path, **extra: str) -> dict[str, str]:
    env = dict(os.environ, LONGTASK_DISKCACHE_DIR=str(directory), PYTHONPATH=str(ROOT), **extra)
    env.pop("WERKZEUG_RUN_MAIN", None)
    return env


def cli_host(directory: Path, out: t.IO[bytes], *args: str, **env: str) -> subprocess.Popen[bytes]:
    """``flask longtask worker`` (of ``tests.apps.diskcache_app``, with ``args``) for the pool of
    ``directory``, its output into ``out``; ``env`` as :func:`env_for`'s."""
    command = [str(BIN / "flask"), "--app", "tests.apps.diskcache_app", "longtask", "worker", *args]
    return subprocess.Popen(command, cwd=ROOT, env=env_for(directory, **env), stdout=out, stderr=subprocess.STDOUT)


def stop(proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM) -> None:
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def test_host_death_fails_running_jobs_and_runs_queued_ones(tmp_path: Path) -> None:
    directory = tmp_path / "lt"
    log = tmp_path / "worker.log"
    out = log.open("wb")
    worker = cli_host(directory, out, LONGTASK_WORKERS="1")
    submitter = DiskcacheBackend(directory, embedded=False)  # a web process that never hosts
    app = Flask("tests.submitter")
    jobs.longtask.init_app(app, backend=submitter)
    try:
        with app.app_context():
            pid_file = tmp_path / "pid"
            running = jobs.stubborn.submit(str(pid_file))
            queued = [jobs.add.submit(n, 100) for n in range(3)]
            pool_pid = int(wait_for(lambda: pid_file.exists() and pid_file.read_text(), 60, "the job to start"))
            assert running.status is JobStatus.RUNNING
            assert [j.status for j in queued] == [JobStatus.QUEUED] * 3

            worker.kill()  # kill -9 the process hosting the pool
            worker.wait(10)
            wait_for(lambda: not alive(pool_pid), 5, "the orphaned pool worker to exit")
            assert running.status is JobStatus.RUNNING  # nobody has noticed yet

            # "The app starts again": a process that may host the pool opens the directory.
            restarted = DiskcacheBackend(directory, workers=1, max_workers=1)
            app2 = Flask("tests.restarted")
            jobs.longtask.init_app(app2, backend=restarted)
            try:
                with app2.app_context():
                    job = jobs.longtask.get_job(running.id)
                    assert job.wait(timeout=10) is JobStatus.FAILED
                    assert t.cast(dict, job.error)["type"] == "WorkerLostError"
                    assert "hosting the worker pool died" in t.cast(dict, job.error)["message"]
                    assert [jobs.longtask.get_job(j.id).result(timeout=30) for j in queued] == [100, 101, 102]
                    statuses = {restarted.get(k)["status"] for k in restarted.scan(keys.JOB_PREFIX)}
                    assert statuses == {"failed", "succeeded"}, "no record left queued or running"
            finally:
                restarted.close()
    finally:
        stop(worker)
        submitter.close()
        out.close()
        assert "Traceback" not in log.read_text(), log.read_text()


def test_flask_longtask_worker_serves_web_processes_that_host_no_pool(tmp_path: Path) -> None:
    """The deployment with LONGTASK_EMBEDDED_WORKER = False: the pool is its own process."""
    directory = tmp_path / "lt"
    log = tmp_path / "worker.log"
    with log.open("wb") as out:
        worker = subprocess.Popen(
            [str(BIN / "flask"), "--app", "tests.apps.diskcache_app", "longtask", "worker"]
            + ["--workers", "2", "--max-workers", "3"],
            cwd=ROOT,
            env=env_for(directory, LONGTASK_EMBEDDED_WORKER="0"),
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    web = Flask("tests.web")
    web.config.update(LONGTASK_EMBEDDED_WORKER=False)
    web_backend = DiskcacheBackend(directory)
    jobs.longtask.init_app(web, backend=web_backend)
    try:
        with web.app_context():
            results = [jobs.add.submit(n, 1000) for n in range(6)]
            assert [j.result(timeout=60) for j in results] == [1000 + n for n in range(6)]
            assert not web_backend.is_pool_host  # this web process never hosted the pool
        os.kill(worker.pid, signal.SIGINT)  # Ctrl+C: the pool stops cleanly
        assert worker.wait(30) == 0
        text = log.read_text()
        assert "Worker pool for" in text and "2 workers, up to 3 while jobs wait" in text, text
        assert "Traceback" not in text, text
    finally:
        stop(worker)
        web_backend.close()


def _http(port: int, method: str, path: str, body: t.Any = None) -> t.Any:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request(
            method,
            path,
            body=None if body is None else json.dumps(body),
            headers={"Content-Type": "application/json", "Connection": "close"},
        )
        response = conn.getresponse()
        data = response.read()
        assert response.status == 200, (response.status, data)
        return json.loads(data)
    finally:
        conn.close()


def test_gunicorn_4_workers_share_jobs_over_http(tmp_path: Path) -> None:
    port = free_port()
    log = tmp_path / "gunicorn.log"
    out = log.open("wb")
    server = subprocess.Popen(
        [
            str(BIN / "gunicorn"),
            "-w",
            "4",
            "-b",
            f"127.0.0.1:{port}",
            "--graceful-timeout",
            "5",
            "tests.apps.diskcache_app:app",
        ],
        cwd=ROOT,
        env=env_for(tmp_path / "lt", LONGTASK_WORKERS="2"),
        stdout=out,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    pool_pids: set[int] = set()
    try:
        wait_for(lambda: _ping(port), 30, "gunicorn to serve")

        # A result: submitted through one worker, read through others.
        submit = _http(port, "POST", "/submit/add", {"args": [20, 22]})
        web_pids = {submit["pid"]}

        def answered() -> bool:
            state = _http(port, "GET", f"/jobs/{submit['id']}")
            web_pids.add(state["pid"])
            return state["status"] == "succeeded" and len(web_pids) >= 3

        wait_for(answered, 30, "the result to be read through other gunicorn workers")
        assert _http(port, "GET", f"/jobs/{submit['id']}")["result"] == 42

        # One pool for the directory, whichever worker received the job.
        ids = [_http(port, "POST", "/submit/whoami")["id"] for _ in range(12)]

        def results() -> list[t.Any] | None:
            states = [_http(port, "GET", f"/jobs/{i}") for i in ids]
            return [s["result"] for s in states] if all(s["status"] == "succeeded" for s in states) else None

        seen = wait_for(results, 30, "the whoami jobs")
        pool_pids = {s["pid"] for s in seen}
        gunicorn_workers = set(children_of(server.pid))
        assert len({s["ppid"] for s in seen}) == 1  # one fork server: one pool host
        assert parent_of(seen[0]["ppid"]) in gunicorn_workers
        assert len(pool_pids) <= 2

        # Cancel through whichever worker answers, watch it through the others.
        stubborn = _http(port, "POST", "/submit/stubborn", {"args": [str(tmp_path / "pid")]})
        wait_for(lambda: _http(port, "GET", f"/jobs/{stubborn['id']}")["status"] == "running", 30, "running")
        cancel_pids = set()
        cancel_pids.add(_http(port, "POST", f"/jobs/{stubborn['id']}/cancel")["pid"])

        def cancelled() -> bool:
            state = _http(port, "GET", f"/jobs/{stubborn['id']}")
            cancel_pids.add(state["pid"])
            return state["status"] == "cancelled" and len(cancel_pids) >= 2

        wait_for(cancelled, 10, "the job to be cancelled, seen from two workers")
        pool_pids.add(int((tmp_path / "pid").read_text()))
    finally:
        stop(server)
        out.close()
    assert "Traceback" not in log.read_text(), log.read_text()
    wait_for(lambda: not any(alive(p) for p in pool_pids), 10, "pool workers to exit with gunicorn")


def _ping(port: int) -> bool:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
    try:
        conn.request("GET", "/jobs/ping")
        conn.getresponse().read()
        return True
    except OSError:  # (not serving yet, or a worker still booting dropped the connection)
        return False
    finally:
        conn.close()
