"""The HTTP API's limits under abuse (issue 18): Server-Sent Events streams capped per process and
per owner, a job streamed only within its window, active jobs capped per owner.

The attacks run against real servers: werkzeug's threaded server, and gunicorn with two worker
processes (sync, as docs/celery.md used to deploy it, and gthread, as the docs say to now).
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import time
import typing as t
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests

from flask_longtask import LongTask
from flask_longtask.backends import ThreadBackend

from . import http_tasks
from .browser import free_port, live_server_process
from .helpers import wait_for
from .services import ROOT

BIN = Path(sys.executable).parent
STEPS = "tests.http_tasks.steps"


def submit(session: requests.Session, base: str, gate: Path) -> str:
    """Submit a job that runs (or waits in the queue) until ``gate`` exists; its URL."""
    r = session.post(f"{base}/api/tasks/{STEPS}", json={"args": [0, str(gate)]}, timeout=10)
    assert r.status_code == 202, r.text
    return base + r.headers["Location"]


def open_stream(session: requests.Session, job_url: str) -> tuple[requests.Response, float]:
    """``GET <job>/events``, returning as soon as the headers arrive, and how long that took."""
    start = time.monotonic()
    response = session.get(job_url + "/events", stream=True, timeout=(5, 5))
    return response, time.monotonic() - start


def refused(response: requests.Response, elapsed: float, status: int) -> None:
    """Refused at once, with Retry-After and a JSON error that says to poll instead."""
    with response:
        assert response.status_code == status, response.text[:200]
        assert int(response.headers["Retry-After"]) > 0
        assert "poll" in response.json()["error"]["message"]
    assert elapsed < 2, f"answered after {elapsed:.1f}s"


def end_stream(session: requests.Session, job_url: str, stream: requests.Response) -> None:
    """Cancel the job: its stream sends the final status and ends, which frees its slots."""
    assert session.delete(job_url, timeout=10).status_code == 200
    with stream:
        assert '"status":"cancelled"' in stream.text


# -- werkzeug's threaded server, one process ----------------------------------------------------


@pytest.fixture
def server(tmp_path):
    import threading

    from werkzeug.serving import make_server

    app = http_tasks.make_app()
    app.config.update(LONGTASK_HTTP_PREFIX="/api")
    backend = ThreadBackend(workers=8)
    http_tasks.longtask.init_app(app, backend=backend)
    srv = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    gate = tmp_path / "gate"
    try:
        yield app, f"http://127.0.0.1:{srv.server_port}", gate
    finally:
        gate.touch()  # every job ends: nothing outlives the test
        srv.shutdown()
        thread.join(10)
        backend.close()


def test_streams_past_the_process_cap_are_503_at_once(server):
    app, base, gate = server
    app.config["LONGTASK_SSE_MAX_STREAMS"] = 2
    owners = [requests.Session() for _ in range(3)]
    urls = [submit(owner, base, gate) for owner in owners]
    first, _ = open_stream(owners[0], urls[0])
    second, _ = open_stream(owners[1], urls[1])
    assert first.status_code == second.status_code == 200

    refused(*open_stream(owners[2], urls[2]), 503)
    start = time.monotonic()
    assert owners[2].get(urls[2], timeout=5).json()["status"] in ("queued", "running")  # polling works
    assert time.monotonic() - start < 2

    end_stream(owners[0], urls[0], first)
    wait_for(lambda: (r := open_stream(owners[2], urls[2])[0]).close() or r.status_code == 200, 10, "a free stream")
    second.close()


def test_streams_past_the_owner_cap_are_429_at_once(server):
    app, base, gate = server
    app.config["LONGTASK_SSE_MAX_STREAMS_PER_OWNER"] = 2
    owner, other = requests.Session(), requests.Session()
    a, b, c = (submit(owner, base, gate) for _ in range(3))
    streams = [open_stream(owner, a)[0], open_stream(owner, b)[0]]
    assert [s.status_code for s in streams] == [200, 200]

    refused(*open_stream(owner, c), 429)
    refused(*open_stream(owner, a), 429)  # the same job again counts too
    theirs, _ = open_stream(other, submit(other, base, gate))
    with theirs:
        assert theirs.status_code == 200  # another owner is not held back

    end_stream(owner, a, streams[0])
    wait_for(lambda: (r := open_stream(owner, c)[0]).close() or r.status_code == 200, 10, "the owner's slot back")
    streams[1].close()


def test_a_job_is_streamed_only_within_its_window(server):
    """A stream cannot be renewed for ever: past ``LONGTASK_SSE_WINDOW`` seconds from its
    submit, a job is no longer streamed (poll it), and an open stream ends at the window."""
    app, base, gate = server
    app.config.update(LONGTASK_SSE_WINDOW=1.0, LONGTASK_SSE_TIMEOUT=30)
    owner = requests.Session()
    url = submit(owner, base, gate)
    stream, _ = open_stream(owner, url)
    start = time.monotonic()
    with stream:
        assert stream.status_code == 200
        assert stream.text.startswith("retry: ")  # returns once the server ends the stream
    assert time.monotonic() - start < 5  # at the window, not after LONGTASK_SSE_TIMEOUT
    refused(*open_stream(owner, url), 429)
    assert owner.get(url, timeout=5).headers["Retry-After"] == "1"  # polling still answers


def test_a_finished_job_is_streamed_whatever_the_caps(server):
    app, base, gate = server
    app.config["LONGTASK_SSE_MAX_STREAMS"] = 0  # no stream of a running job in this process
    owner = requests.Session()
    url = base + owner.post(f"{base}/api/tasks/tests.http_tasks.add", json={"args": [2]}).headers["Location"]
    wait_for(lambda: owner.get(url).json()["status"] == "succeeded", 30, "the job to succeed")
    with owner.get(url + "/events", stream=True, timeout=10) as r:
        assert r.status_code == 200 and '"result":2' in r.text
    refused(*open_stream(owner, submit(owner, base, gate)), 503)


def test_the_test_client_streams_when_it_says_it_has_threads(server):
    """Flask's test client says it serves one request at a time, so it gets no stream unless the
    test says otherwise (as docs/http.md tells)."""
    app, base, gate = server
    app.config["LONGTASK_SSE_TIMEOUT"] = 0.2
    client = app.test_client()
    url = client.post(f"/api/tasks/{STEPS}", json={"args": [1, str(gate)]}).headers["Location"]
    assert client.get(url + "/events").status_code == 503
    r = client.get(url + "/events", environ_overrides={"wsgi.multithread": True})
    assert r.status_code == 200 and r.mimetype == "text/event-stream"


def test_active_jobs_per_owner_are_capped(server):
    app, base, gate = server
    app.config["LONGTASK_HTTP_MAX_ACTIVE"] = 2
    owner, other = requests.Session(), requests.Session()
    body, key = {"args": [0, str(gate)]}, {"Idempotency-Key": "k"}
    first = owner.post(f"{base}/api/tasks/{STEPS}", json=body, headers=key, timeout=10)
    assert first.status_code == 202
    submit(owner, base, gate)
    r = owner.post(f"{base}/api/tasks/{STEPS}", json=body, timeout=10)
    assert r.status_code == 429 and int(r.headers["Retry-After"]) > 0
    assert "LONGTASK_HTTP_MAX_ACTIVE" in r.json()["error"]["message"]
    submit(other, base, gate)  # another owner has their own
    # Replaying an Idempotency-Key gives the same job: not one more, so not refused.
    again = owner.post(f"{base}/api/tasks/{STEPS}", json=body, headers=key, timeout=10)
    assert again.status_code == 202 and again.json()["id"] == first.json()["id"]

    url = base + first.headers["Location"]
    assert owner.delete(url).status_code == 200
    wait_for(lambda: owner.get(url).json()["status"] == "cancelled", 10, "the job to end")
    submit(owner, base, gate)  # a job that ended frees its place


def test_bad_limits_are_refused_at_init_app():
    for key, value in [
        ("LONGTASK_SSE_MAX_STREAMS", -1),
        ("LONGTASK_SSE_MAX_STREAMS_PER_OWNER", "4"),
        ("LONGTASK_HTTP_MAX_ACTIVE", 0),
        ("LONGTASK_SSE_WINDOW", 0),
    ]:
        app = http_tasks.make_app()
        app.config.update({"LONGTASK_HTTP_PREFIX": "/api", key: value})
        with pytest.raises(ValueError, match=f"{key} must be .*, not {value!r}"):
            LongTask(app, backend=ThreadBackend(workers=1))


# -- real gunicorn, two worker processes --------------------------------------------------------


@contextlib.contextmanager
def gunicorn(tmp_path: Path, *options: str, **settings: str) -> t.Iterator[str]:
    """gunicorn serving ``tests/apps/http_app.py`` with ``options`` and two worker processes,
    once both answer; ``settings`` are FLASK_* variables."""
    port = free_port()
    cmd = [str(BIN / "gunicorn"), *options, "-w", "2", "-b", f"127.0.0.1:{port}", "--graceful-timeout", "3"]
    env = {
        "LONGTASK_DISKCACHE_DIR": str(tmp_path / "lt"),
        "PYTHONPATH": str(ROOT),
        **{f"FLASK_{key}": value for key, value in settings.items()},
    }
    with live_server_process([*cmd, "tests.apps.http_app:app"], port, path="/api/", env=env, cwd=ROOT) as base:
        pids: set[str] = set()

        def both_answer() -> bool:
            with requests.Session() as new:  # a new connection each time: either process may take it
                pids.add(new.get(f"{base}/api/", timeout=30).headers["X-Pid"])
            return len(pids) == 2

        wait_for(both_answer, 60, "both gunicorn workers to answer")
        yield base


def test_sse_clients_cannot_starve_gunicorn_sync_workers(tmp_path):
    """Six SSE clients against ``gunicorn -w 2`` (sync workers, which serve one request at a time):
    each stream is refused at once (a stream would hold a whole process), and every other
    request is still answered promptly."""
    gate = tmp_path / "never"
    with gunicorn(tmp_path) as base:
        clients = [requests.Session() for _ in range(6)]
        urls = [submit(client, base, gate) for client in clients]

        def attack(i: int) -> tuple[requests.Response | None, float]:
            try:
                response, elapsed = open_stream(clients[i], urls[i])
            except requests.RequestException:
                return None, 5.0  # no answer in time
            if response.status_code != 200:
                _ = response.content  # read it and let the connection go, as a browser's EventSource does
            return response, elapsed

        with ThreadPoolExecutor(len(clients)) as pool:
            answers = list(pool.map(attack, range(len(clients))))
        try:
            start = time.monotonic()
            try:
                assert clients[0].get(urls[0], timeout=5).json()["status"] == "queued"
                assert submit(requests.Session(), base, gate)
            except requests.RequestException as exc:
                raise AssertionError(f"other requests were not answered while streams were open: {exc}") from None
            assert time.monotonic() - start < 2, "other requests waited behind the streams"
            for response, elapsed in answers:
                assert response is not None, "a stream request was not answered"
                refused(response, elapsed, 503)
        finally:
            for response, _ in answers:
                if response is not None:
                    response.close()


def connection(owner: requests.Session) -> requests.Session:
    """The same owner (its session cookie) on a new connection: gunicorn's process that answers
    is the one that accepts the connection, and a session keeps its connection alive."""
    session = requests.Session()
    session.cookies.update(owner.cookies)
    return session


def test_owner_limits_hold_across_gunicorn_processes(tmp_path):
    """The documented deployment (gthread workers) streams, and an owner's caps count across its
    processes: the second process refuses what the first one holds."""
    gate = tmp_path / "never"
    settings = {"LONGTASK_SSE_MAX_STREAMS_PER_OWNER": "1", "LONGTASK_HTTP_MAX_ACTIVE": "2"}
    with gunicorn(tmp_path, "-k", "gthread", "--threads", "4", **settings) as base:
        owner = requests.Session()
        a, b = submit(owner, base, gate), submit(owner, base, gate)

        pids: set[str] = set()

        def third_job_refused_by_both_processes() -> bool:
            with connection(owner) as new:
                r = new.post(f"{base}/api/tasks/{STEPS}", json={"args": [0, str(gate)]}, timeout=10)
            assert r.status_code == 429, r.text  # never accepted, by either process
            pids.add(r.headers["X-Pid"])
            return len(pids) == 2

        wait_for(third_job_refused_by_both_processes, 30, "a refusal from each gunicorn process")

        stream, _ = open_stream(owner, a)
        assert stream.status_code == 200
        held_by = stream.headers["X-Pid"]

        def refused_by_the_other_process() -> bool:
            with connection(owner) as new:
                response, elapsed = open_stream(new, b)
                refused(response, elapsed, 429)
            return response.headers["X-Pid"] != held_by

        wait_for(refused_by_the_other_process, 30, "the other process to refuse a second stream")

        end_stream(owner, a, stream)  # a is cancelled: its stream and its job slot are free
        wait_for(lambda: (r := open_stream(owner, b)[0]).close() or r.status_code == 200, 10, "the stream slot back")
        submit(owner, base, gate)


def test_a_dead_process_gives_its_owner_streams_back(tmp_path):
    """``kill -9`` of the process that holds an owner's stream: the owner's slot, kept in the
    store, is refused a while (the dead process never gave it back), then expires by itself."""
    gate = tmp_path / "never"
    settings = {"LONGTASK_SSE_MAX_STREAMS_PER_OWNER": "1", "LONGTASK_SSE_TIMEOUT": "2"}
    with gunicorn(tmp_path, "-k", "gthread", "--threads", "4", **settings) as base:
        owner = requests.Session()
        url = submit(owner, base, gate)
        stream, _ = open_stream(owner, url)
        assert stream.status_code == 200
        os.kill(int(stream.headers["X-Pid"]), signal.SIGKILL)
        stream.close()
        refused(*open_stream(connection(owner), url), 429)  # (whichever process answers)
        # Back within the stream's life (2 s) and the slot's margin (10 s), with room to spare.
        wait_for(lambda: (r := open_stream(connection(owner), url)[0]).close() or r.status_code == 200, 30, "the slot")
