"""Server-Sent Events over a real HTTP server (werkzeug, threaded), on thread and diskcache."""

from __future__ import annotations

import json
import threading

import pytest
import requests
from werkzeug.serving import make_server

from . import http_tasks
from .helpers import wait_for


@pytest.fixture(params=["thread", "diskcache"])
def server(request, tmp_path):
    app = http_tasks.make_app()
    app.config.update(LONGTASK_HTTP_PREFIX="/api", LONGTASK_SSE_TIMEOUT=30)
    if request.param == "thread":
        from flask_longtask.backends import ThreadBackend

        backend = ThreadBackend(workers=2)
    else:
        from flask_longtask.backends.diskcache import DiskcacheBackend

        backend = DiskcacheBackend(tmp_path / "lt", workers=2)
    http_tasks.longtask.init_app(app, backend=backend)
    srv = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield app, f"http://127.0.0.1:{srv.server_port}"
    srv.shutdown()
    thread.join(10)
    backend.close()


def read_events(response, stop_after=None):
    """Parse an SSE stream into (id, event, data) tuples until it ends or ``stop_after`` events."""
    events, current = [], {}
    for line in response.iter_lines(decode_unicode=True):
        if line == "":
            if "event" in current:
                events.append((int(current["id"]), current["event"], json.loads(current["data"])))
                if stop_after and len(events) >= stop_after:
                    break
            current = {}
        elif not line.startswith(":"):
            key, _, value = line.partition(": ")
            current[key] = value
    return events


def test_stream_sends_progress_then_final_status(server):
    app, base = server
    s = requests.Session()
    job = s.post(f"{base}/api/tasks/tests.http_tasks.steps", json={"args": [5], "kwargs": {"delay": 0.05}}).json()
    with s.get(f"{base}/api/jobs/{job['id']}/events", stream=True, timeout=30) as r:
        assert r.headers["Content-Type"].startswith("text/event-stream")
        events = read_events(r)
    progress = [e for e in events if e[1] == "progress"]
    assert progress, events
    ids = [e[0] for e in events]
    assert ids == sorted(set(ids))  # strictly increasing: no repeats
    assert progress[-1][2] == {"done": 5, "total": 5}  # the last value always arrives
    final = events[-1]
    assert final[1] == "status" and final[2]["status"] == "succeeded" and final[2]["result"] == {"done": 5, "total": 5}


def test_reconnect_with_last_event_id_resumes_without_repeats(server, tmp_path):
    app, base = server
    gate = tmp_path / "gate"
    s = requests.Session()
    job = s.post(f"{base}/api/tasks/tests.http_tasks.steps", json={"args": [3, str(gate)]}).json()
    url = f"{base}/api/jobs/{job['id']}/events"
    with s.get(url, stream=True, timeout=30) as r:
        first = read_events(r, stop_after=1)
    last_id, name, value = first[0]
    assert name == "progress"
    wait_for(lambda: s.get(f"{base}/api/jobs/{job['id']}").json()["progress"] == {"done": 3, "total": 3})
    gate.touch()
    with s.get(url, stream=True, timeout=30, headers={"Last-Event-ID": str(last_id)}) as r:
        rest = read_events(r)
    assert all(event_id > last_id for event_id, _, _ in rest)
    assert rest[-1][1] == "status" and rest[-1][2]["status"] == "succeeded"
    if value != {"done": 3, "total": 3}:  # the client had not seen the last value: it gets it now
        assert ("progress", {"done": 3, "total": 3}) in [(n, v) for _, n, v in rest]


def test_idle_stream_ends_after_the_timeout(server, tmp_path):
    app, base = server
    app.config["LONGTASK_SSE_TIMEOUT"] = 0.5
    s = requests.Session()
    job = s.post(f"{base}/api/tasks/tests.http_tasks.steps", json={"args": [0, str(tmp_path / "never")]}).json()
    with s.get(f"{base}/api/jobs/{job['id']}/events", stream=True, timeout=10) as r:
        body = r.text  # returns because the server closed the stream
    assert body.startswith("retry: 1000")
    assert s.delete(f"{base}/api/jobs/{job['id']}").status_code == 200


def test_stream_of_someone_elses_job_is_404(server):
    app, base = server
    job = requests.Session().post(f"{base}/api/tasks/tests.http_tasks.add", json={"args": [1]}).json()
    r = requests.get(f"{base}/api/jobs/{job['id']}/events", timeout=10)
    assert r.status_code == 404 and r.json()["error"]["status"] == 404


@pytest.mark.parametrize("server", ["diskcache"], indirect=True)  # (storage to tamper with: its file)
def test_a_stream_that_fails_mid_way_ends_with_a_server_error_event(server, tmp_path, caplog):
    # The job's progress rewritten in storage by someone without the key while a client streams
    # it: the stream says so in an event and ends, rather than dropping the connection.
    from flask_longtask import TamperedValueError

    from .test_diskcache_signed import rewrite

    app, base = server
    gate = tmp_path / "gate"
    s = requests.Session()
    job = s.post(f"{base}/api/tasks/tests.http_tasks.steps", json={"args": [2, str(gate)]}).json()
    wait_for(lambda: s.get(f"{base}/api/jobs/{job['id']}").json()["progress"] == {"done": 2, "total": 2})
    with s.get(f"{base}/api/jobs/{job['id']}/events", stream=True, timeout=30) as r:
        lines = r.iter_lines(decode_unicode=True)
        assert next(line for line in lines if line.startswith("event:")) == "event: progress"
        rewrite(tmp_path / "lt", f"progress:{job['id']}", 4, b"\x80\x04N.")  # (pickled None, unsigned)
        rest = list(lines)  # until the server ends the stream
    assert "event: server-error" in rest
    data = [json.loads(line[len("data: ") :]) for line in rest if line.startswith("data: ")]
    assert data[-1] == {"error": {"status": 500, "message": "Internal server error."}}
    logged = [record.exc_info[0] for record in caplog.records if record.exc_info]
    assert TamperedValueError in logged  # (in the app's log, as a 500 is)
    gate.touch()
