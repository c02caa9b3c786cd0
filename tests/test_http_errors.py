"""The HTTP API's error answers (issue 18): every error is JSON, 500 included, with no exception
text outside debug; a failed job's message only where the app allows it; deep, NaN and
Infinity JSON refused; no NaN ever sent; no HTTP API without a ``SECRET_KEY`` (or an owner hook)."""

from __future__ import annotations

import json
import logging
import math

import pytest
from flask import Flask

from flask_longtask import LongTask
from flask_longtask.backends import ThreadBackend
from flask_longtask.store import keys

from . import http_tasks
from .helpers import wait_for


@pytest.fixture
def app():
    app = http_tasks.make_app()
    app.config.update(LONGTASK_HTTP_PREFIX="/api")
    backend = ThreadBackend(workers=2)
    http_tasks.longtask.init_app(app, backend=backend)
    yield app
    backend.close()


@pytest.fixture
def client(app):
    return app.test_client()


def submit(client, task, *args, **kwargs):
    return client.post(f"/api/tasks/{task}", json={"args": list(args), "kwargs": kwargs})


def finished(client, url):
    return wait_for(
        lambda: (r := client.get(url)).json["status"] in ("succeeded", "failed", "cancelled") and r,
        30,
        "the job to finish",
    )


def strict_json(data: bytes):
    """Parse as a browser's ``JSON.parse`` does: ``NaN`` and ``Infinity`` are errors."""

    def refuse(name: str) -> None:
        raise ValueError(f"{name} is not JSON")

    return json.loads(data, parse_constant=refuse)


def assert_json_error(response, status: int) -> dict:
    assert response.status_code == status, response.data
    assert response.mimetype == "application/json", response.data
    body = strict_json(response.data)
    assert body["error"]["status"] == status and body["error"]["message"]
    return body


# -- 500s are JSON, without details -------------------------------------------------------------


def test_an_unexpected_exception_in_a_view_is_a_json_500_without_its_text(app, client, caplog):
    lt = http_tasks.longtask

    def broken_owner() -> str:
        raise KeyError("postgres://app:hunter2@db/prod")

    lt.owner_loader(broken_owner)
    try:
        r = client.get("/api/jobs/" + "0" * 32)
    finally:
        lt._owner_loader = None
    body = assert_json_error(r, 500)
    assert "hunter2" not in r.get_data(as_text=True) and "KeyError" not in r.get_data(as_text=True)
    assert body == {"error": {"status": 500, "message": "Internal server error."}}
    # The app's log still has the traceback, for its developers.
    logged = [r for r in caplog.records if r.levelno >= logging.ERROR and r.exc_info]
    assert any("hunter2" in str(r.exc_info[1]) for r in logged)


def test_a_storage_failure_is_a_json_500_without_its_text(app, client):
    url = submit(client, "tests.http_tasks.add", 1).headers["Location"]
    job_id = finished(client, url).json["id"]
    backend = app.extensions["longtask"].backend
    backend.set(keys.result(job_id), b"not a pickle: secret-detail")  # a stored value that cannot be read
    r = client.get(url)
    assert_json_error(r, 500)
    assert "secret-detail" not in r.get_data(as_text=True) and "pickle" not in r.get_data(as_text=True)


def test_debug_mode_shows_the_exception(app, client):
    app.debug = True
    lt = http_tasks.longtask
    lt.owner_loader(lambda: 1 / 0)
    try:
        r = client.get("/api/jobs/" + "0" * 32)
    finally:
        lt._owner_loader = None
    body = assert_json_error(r, 500)
    assert body["error"]["exception"] == "ZeroDivisionError: division by zero"
    assert "Traceback" in body["error"]["traceback"]


def test_werkzeug_http_errors_in_views_are_json(app, client):
    app.config["MAX_CONTENT_LENGTH"] = 10  # Flask's own limit: werkzeug raises 413 as the body is read
    app.config["LONGTASK_HTTP_MAX_BODY"] = 1000
    r = client.post(
        "/api/tasks/tests.http_tasks.add", data=json.dumps({"args": [1, 2]}), content_type="application/json"
    )
    assert_json_error(r, 413)


# -- deep, NaN and Infinity JSON ----------------------------------------------------------------


@pytest.mark.parametrize("depth", [990, 5000, 65])
def test_deeply_nested_json_is_a_400_without_a_traceback(app, client, caplog, depth):
    body = '{"args": [' + "[" * depth + "]" * depth + "]}"
    r = client.post("/api/tasks/tests.http_tasks.steps", data=body, content_type="application/json")
    message = assert_json_error(r, 400)["error"]["message"]
    assert "nested" in message and "64" in message
    assert not [rec for rec in caplog.records if rec.levelno >= logging.ERROR]
    assert not list(app.extensions["longtask"].backend.scan(keys.JOB_PREFIX))


def test_json_nested_64_deep_is_accepted(client):
    inner = "[" * 62 + "]" * 62  # inside "args" and the object: 64 levels
    r = client.post(
        "/api/tasks/tests.http_tasks.echo", data='{"args": [' + inner + "]}", content_type="application/json"
    )
    assert r.status_code == 202, r.json


@pytest.mark.parametrize("number", ["NaN", "Infinity", "-Infinity", "1e999", "-1e999"])
def test_nan_and_infinity_are_refused_in_input(app, client, number):
    r = client.post(
        "/api/tasks/tests.http_tasks.steps",
        data=f'{{"args": [2], "kwargs": {{"delay": {number}}}}}',
        content_type="application/json",
    )
    assert "NaN" in assert_json_error(r, 400)["error"]["message"]
    assert not list(app.extensions["longtask"].backend.scan(keys.JOB_PREFIX))


def test_nan_and_infinity_in_a_result_or_progress_are_sent_as_null(client):
    url = submit(client, "tests.http_tasks.not_finite").headers["Location"]
    r = finished(client, url)
    body = strict_json(r.data)  # what a browser can parse
    assert body["status"] == "succeeded"
    assert body["result"] == {"nan": None, "inf": None, "-inf": None, "list": [1.5, None], "ok": 2.0}
    assert body["progress"] == [None, 1]
    assert "result_error" not in body


# -- a failed job's error: its type; its message or traceback where the app allows -------------


def failed_job(client):
    r = finished(client, submit(client, "tests.http_tasks.boom", "postgres://app:hunter2@db").headers["Location"])
    assert r.json["status"] == "failed"
    return r.json["error"]


def test_a_failed_job_shows_only_its_error_type_by_default(app, client):
    assert app.config["LONGTASK_HTTP_ERRORS"] is None
    assert failed_job(client) == {"type": "ValueError"}


def test_a_failed_job_shows_its_message_where_the_app_allows(app, client):
    app.config["LONGTASK_HTTP_ERRORS"] = "message"
    assert failed_job(client) == {"type": "ValueError", "message": "postgres://app:hunter2@db"}


@pytest.mark.parametrize("how", ["setting", "debug"])
def test_a_failed_job_shows_its_traceback_where_the_app_allows_or_in_debug(app, client, how):
    if how == "setting":
        app.config["LONGTASK_HTTP_ERRORS"] = "traceback"
    else:
        app.debug = True
    error = failed_job(client)
    assert (error["type"], error["message"]) == ("ValueError", "postgres://app:hunter2@db")
    assert "Traceback" in error["traceback"] and "raise ValueError" in error["traceback"]


def test_explicit_type_holds_in_debug_too(app, client):
    app.debug = True
    app.config["LONGTASK_HTTP_ERRORS"] = "type"
    assert failed_job(client) == {"type": "ValueError"}


def test_a_bad_errors_setting_is_refused_at_init_app():
    app = http_tasks.make_app()
    app.config.update(LONGTASK_HTTP_PREFIX="/api", LONGTASK_HTTP_ERRORS="everything")
    with pytest.raises(
        ValueError, match="LONGTASK_HTTP_ERRORS must be 'type', 'message', 'traceback'.*not 'everything'"
    ):
        LongTask(app, backend=ThreadBackend(workers=1))


# -- no SECRET_KEY: refused when the API is turned on, not at each request ----------------------


def test_no_secret_key_fails_at_init_app_with_the_http_prefix():
    app = Flask("nosecret")
    app.config["LONGTASK_HTTP_PREFIX"] = "/api"
    with pytest.raises(RuntimeError, match="SECRET_KEY"):
        LongTask(app, backend=ThreadBackend(workers=1))


def test_no_secret_key_fails_when_the_blueprint_is_registered():
    app = Flask("nosecret")
    backend = ThreadBackend(workers=1)
    longtask = LongTask(app, backend=backend)
    try:
        with pytest.raises(RuntimeError, match="SECRET_KEY"):
            app.register_blueprint(longtask.blueprint("/api"))
    finally:
        backend.close()


def test_an_owner_loader_needs_no_secret_key():
    app = Flask("nosecret")
    backend = ThreadBackend(workers=1)
    longtask = LongTask(app, backend=backend)
    longtask.owner_loader(lambda: "alice")
    try:
        app.register_blueprint(longtask.blueprint("/api"))
        assert app.test_client().get("/api/jobs/" + "0" * 32).status_code == 404
    finally:
        backend.close()


def test_the_http_api_gives_max_queued_a_default():
    """``LONGTASK_MAX_QUEUED`` is 1000 once the HTTP API is on, unless the app set it."""
    backend = ThreadBackend(workers=1)
    try:
        plain = Flask("plain")
        LongTask(plain, backend=backend)
        assert plain.config["LONGTASK_MAX_QUEUED"] is None
        for register in ("prefix", "by hand"):
            app = Flask("api")
            app.config.update(SECRET_KEY="s", LONGTASK_HTTP_PREFIX="/api" if register == "prefix" else None)
            longtask = LongTask(app, backend=backend)
            if register == "by hand":
                app.register_blueprint(longtask.blueprint("/api"))
            assert app.config["LONGTASK_MAX_QUEUED"] == 1000, register
        chosen = Flask("chosen")
        chosen.config.update(SECRET_KEY="s", LONGTASK_HTTP_PREFIX="/api", LONGTASK_MAX_QUEUED=math.inf)
        LongTask(chosen, backend=backend)
        assert chosen.config["LONGTASK_MAX_QUEUED"] == math.inf  # "no limit", said explicitly
    finally:
        backend.close()
