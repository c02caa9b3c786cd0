"""The HTTP API through the Flask test client, on ThreadBackend and DiskcacheBackend."""

from __future__ import annotations

import json
import threading

import pytest

from flask_longtask.store import keys

from . import http_tasks
from .helpers import wait_for


@pytest.fixture(params=["thread", "diskcache"])
def app(request, tmp_path):
    app = http_tasks.make_app()
    app.config.update(LONGTASK_HTTP_PREFIX="/api", LONGTASK_MAX_QUEUED=None)
    if request.param == "thread":
        from flask_longtask.backends import ThreadBackend

        backend = ThreadBackend(workers=2)
    else:
        from flask_longtask.backends.diskcache import DiskcacheBackend

        backend = DiskcacheBackend(tmp_path / "lt", workers=2)
    http_tasks.longtask.init_app(app, backend=backend)
    yield app
    backend.close()


@pytest.fixture
def client(app):
    return app.test_client()


def submit(client, task, *args, headers=None, **kwargs):
    return client.post(f"/api/tasks/{task}", json={"args": list(args), "kwargs": kwargs}, headers=headers or {})


def wait_done(client, url, timeout=30):
    return wait_for(
        lambda: (r := client.get(url)).json["status"] in ("succeeded", "failed", "cancelled") and r,
        timeout,
        "the job to finish",
    )


def test_submit_poll_result(client):
    r = submit(client, "tests.http_tasks.add", 2, b=3)
    assert r.status_code == 202
    assert r.headers["Location"] == f"/api/jobs/{r.json['id']}"
    assert r.json["status"] in ("queued", "running", "succeeded")
    done = wait_done(client, r.headers["Location"])
    assert done.json["result"] == 5
    assert done.json["task"] == "tests.http_tasks.add"
    assert done.json["created_at"] <= done.json["finished_at"]
    assert done.json["time_limit"] is None  # (neither the task nor the app set one)
    assert "Retry-After" not in done.headers


def test_a_time_limited_job_says_so(app, client, tmp_path):
    app.config["LONGTASK_TIME_LIMIT"] = 0.2  # (read at submit from the app's store)
    app.extensions["longtask"].store.time_limit = 0.2
    r = submit(client, "tests.http_tasks.steps", 1, str(tmp_path / "never"))
    assert r.json["time_limit"] == 0.2
    done = wait_done(client, r.headers["Location"])
    assert done.json["status"] == "failed"
    assert done.json["error"]["type"] == "TimeLimitExceeded"


def test_running_job_has_progress_and_retry_after(client, tmp_path):
    gate = tmp_path / "gate"
    r = submit(client, "tests.http_tasks.steps", 3, str(gate))
    url = r.headers["Location"]
    running = wait_for(lambda: (x := client.get(url)).json["progress"] == {"done": 3, "total": 3} and x, 30)
    assert running.json["status"] == "running" and running.headers["Retry-After"] == "1"
    gate.touch()
    assert wait_done(client, url).json["result"] == {"done": 3, "total": 3}


def test_cancel_with_delete(client, tmp_path):
    r = submit(client, "tests.http_tasks.steps", 1, str(tmp_path / "never"))
    url = r.headers["Location"]
    wait_for(lambda: client.get(url).json["status"] == "running", 30)
    assert client.delete(url).status_code == 200
    assert wait_done(client, url).json["status"] == "cancelled"
    assert client.delete(url).json["status"] == "cancelled"  # again: a no-op


def test_failure_is_reported_without_traceback(app, client):
    """By its type only; its message where the app allows it (more in test_http_errors.py)."""
    url = submit(client, "tests.http_tasks.boom", "bad thing").headers["Location"]
    done = wait_done(client, url)
    assert done.json["status"] == "failed"
    assert done.json["error"] == {"type": "ValueError"}
    app.config["LONGTASK_HTTP_ERRORS"] = "message"
    assert client.get(url).json["error"] == {"type": "ValueError", "message": "bad thing"}


def test_result_that_is_not_json(client):
    done = wait_done(client, submit(client, "tests.http_tasks.opaque").headers["Location"])
    assert done.json["status"] == "succeeded"
    assert done.json["result"] is None and "JSON" in done.json["result_error"]


def test_only_http_tasks_are_offered(client):
    for name in ("tests.http_tasks.private", "nope", "tests.http_tasks.add/../private"):
        r = submit(client, name)
        assert r.status_code == 404 and "error" in r.json


@pytest.mark.parametrize(
    "body, status",
    [
        (b"not json", 400),
        (b'["a", "list"]', 400),
        (b'{"args": "x"}', 400),
        (b'{"args": [], "kwargs": [], "other": 1}', 400),
        (b'{"kwargs": {"a": 1, "zzz": 2}}', 400),
        (b'{"kwargs": {"__class__": 1}}', 400),
        (b'{"args": [1, 2, 3]}', 400),
        (b'{"args": [{"$dict": 1}], "kwargs": {"_private": 1}}', 400),
        (b'{"args": ["1"]}', 400),
        (b'{"args": [1.5]}', 400),
        (b'{"args": [true]}', 400),
        (b'{"args": [null]}', 400),
        (b'{"args": [1], "kwargs": {"b": "2"}}', 400),
    ],
)
def test_malformed_bodies_are_400(client, backend_jobs, body, status):
    before = backend_jobs()
    r = client.post("/api/tasks/tests.http_tasks.add", data=body, content_type="application/json")
    assert r.status_code == status and r.json["error"]["message"]
    assert backend_jobs() == before  # nothing was queued


def test_type_errors_name_the_argument(client):
    r = submit(client, "tests.http_tasks.add", "1")
    assert r.status_code == 400
    message = r.json["error"]["message"]
    assert message == "Wrong arguments for 'tests.http_tasks.add': argument 'a' must be int, not str."
    r = submit(client, "tests.http_tasks.steps", 2, delay=None)
    assert "argument 'delay' must be float, not NoneType" in r.json["error"]["message"]
    assert submit(client, "tests.http_tasks.steps", 2, delay=0).status_code == 202  # an int is a float


def test_non_json_content_type_and_oversized_body(client, app, backend_jobs):
    r = client.post("/api/tasks/tests.http_tasks.add", data="a=1", content_type="application/x-www-form-urlencoded")
    assert r.status_code == 415
    app.config["LONGTASK_HTTP_MAX_BODY"] = 100
    big = json.dumps({"args": ["x" * 200]})
    r = client.post("/api/tasks/tests.http_tasks.add", data=big, content_type="application/json")
    assert r.status_code == 413
    assert backend_jobs() == set()


def test_methods_not_allowed_are_json_405(client):
    assert client.get("/api/tasks/tests.http_tasks.add").status_code == 405
    r = client.put("/api/jobs/" + "0" * 32)
    assert r.status_code == 405 and r.headers["Allow"] == "GET, DELETE" and r.json["error"]
    assert client.post("/api/jobs/" + "0" * 32 + "/events").status_code == 405
    assert client.get("/api/whatever").status_code == 404


def test_unknown_guessed_and_foreign_jobs_are_404(app, client):
    mine = submit(client, "tests.http_tasks.add", 1)
    url = mine.headers["Location"]
    other = app.test_client()  # another browser: another session
    for path in (url, url + "/events", "/api/jobs/" + "f" * 32, "/api/jobs/../../etc", "/api/jobs/%00"):
        assert other.get(path).status_code == 404, path
    assert other.delete(url).status_code == 404
    assert wait_done(client, url).json["result"] == 1  # the owner still can, and it was not cancelled


def test_idempotency_key_returns_the_same_job(client):
    headers = {"Idempotency-Key": "order-42"}
    first = submit(client, "tests.http_tasks.add", 1, headers=headers)
    again = submit(client, "tests.http_tasks.add", 1, headers=headers)
    assert first.status_code == again.status_code == 202
    assert first.json["id"] == again.json["id"]
    other = submit(client, "tests.http_tasks.add", 1, headers={"Idempotency-Key": "order-43"})
    assert other.json["id"] != first.json["id"]


def test_memo_hit_is_shared_with_its_new_owner_read_only(app, client):
    first = submit(client, "tests.http_tasks.shared", 4)
    wait_done(client, first.headers["Location"])
    other = app.test_client()
    hit = submit(other, "tests.http_tasks.shared", 4)
    assert hit.json["id"] == first.json["id"] and hit.json["result"] == 40
    assert other.get(hit.headers["Location"]).status_code == 200
    assert other.delete(hit.headers["Location"]).status_code == 403  # not theirs to cancel


def test_idempotency_key_reused_with_other_arguments_is_422(client):
    headers = {"Idempotency-Key": "order-7"}
    assert submit(client, "tests.http_tasks.add", 1, headers=headers).status_code == 202
    r = submit(client, "tests.http_tasks.add", 2, headers=headers)
    assert r.status_code == 422 and "other arguments" in r.json["error"]["message"]


def test_a_form_post_from_another_site_cannot_start_a_job(client, backend_jobs):
    # What a cross-site <form method=post> can send: no JSON content type, even with no body.
    for content_type in ("application/x-www-form-urlencoded", "text/plain", "multipart/form-data"):
        r = client.post("/api/tasks/tests.http_tasks.add", data=b"", content_type=content_type)
        assert r.status_code == 415
    assert backend_jobs() == set()


def test_queue_bound_answers_503(app, client, tmp_path):
    app.config["LONGTASK_MAX_QUEUED"] = 0
    r = submit(client, "tests.http_tasks.add", 1)
    backend = app.extensions["longtask"].backend
    if backend.queue_length() is None:
        assert r.status_code == 202  # a backend that cannot count is never refused
        return
    assert r.status_code == 503 and r.headers["Retry-After"] == "5"


def test_authorize_and_owner_hooks(app, client):
    lt = http_tasks.longtask
    try:
        lt.authorize(lambda task: task.name != "tests.http_tasks.boom")
        assert submit(client, "tests.http_tasks.boom", "x").status_code == 403
        assert submit(client, "tests.http_tasks.add", 1).status_code == 202
        lt.owner_loader(lambda: None)
        assert submit(client, "tests.http_tasks.add", 1).status_code == 401
        lt.owner_loader(lambda: "alice")
        url = submit(client, "tests.http_tasks.add", 1).headers["Location"]
        assert app.test_client().get(url).status_code == 200  # alice, whatever the session
    finally:
        lt._authorize = None
        lt._owner_loader = None


def test_cancel_storm_breaks_nothing(app, client, tmp_path):
    urls = [submit(client, "tests.http_tasks.steps", 1, str(tmp_path / "never")).headers["Location"] for _ in range(4)]
    codes: list[int] = []

    def storm() -> None:
        c = app.test_client()
        with client.session_transaction() as sess:
            owner = dict(sess)
        with c.session_transaction() as sess:
            sess.update(owner)
        for _ in range(25):
            for url in urls:
                codes.append(c.delete(url).status_code)

    threads = [threading.Thread(target=storm) for _ in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert set(codes) == {200}
    for url in urls:
        assert wait_done(client, url).json["status"] == "cancelled"
    assert wait_done(client, submit(client, "tests.http_tasks.add", 7).headers["Location"]).json["result"] == 7


@pytest.fixture
def backend_jobs(app):
    backend = app.extensions["longtask"].backend
    return lambda: set(backend.scan(keys.JOB_PREFIX))
