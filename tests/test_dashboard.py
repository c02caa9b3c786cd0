"""The dashboard through Flask's test client: who may see it, how its writes are guarded, what
its pages and live parts say. Its behaviour in a real browser, with jobs of another process, is
in ``test_dashboard_browser.py``."""

from __future__ import annotations

import threading
import typing as t

import pytest
from flask import Flask, request

from flask_longtask import JobStatus, LongTask, current_job
from flask_longtask.backends import ThreadBackend
from flask_longtask.dashboard import guard, views

from .helpers import wait_for

PREFIX = "/longtask/dashboard"


@pytest.fixture
def made() -> t.Iterator[tuple[Flask, LongTask, threading.Event]]:
    app = Flask("tests.test_dashboard")
    app.config.update(LONGTASK_PROGRESS_INTERVAL=0.01)
    backend = ThreadBackend(workers=4)
    longtask = LongTask(app, backend=backend)
    gate = threading.Event()

    @longtask.task(name="waits")
    def waits() -> str:
        current_job.set_progress((1, 4))
        while not current_job.is_cancel_requested and not gate.is_set():
            gate.wait(0.01)
        return "done"

    @longtask.task(name="fails")
    def fails(message: str) -> None:
        raise ValueError(message)

    @longtask.task(name="double")
    def double(n: int) -> int:
        return 2 * n

    app.register_blueprint(longtask.dashboard(authorize=lambda: request.headers.get("X-Operator") == "yes"))
    yield app, longtask, gate
    gate.set()
    backend.close()


def client(app: Flask) -> t.Any:
    c = app.test_client()
    c.environ_base["HTTP_X_OPERATOR"] = "yes"
    return c


def token_of(c: t.Any) -> str:
    c.get(PREFIX + "/")
    return t.cast(str, c.get_cookie(guard.COOKIE, path=PREFIX).value)


def test_without_authorize_it_answers_403_outside_debug_mode_and_says_why() -> None:
    app = Flask(__name__)
    longtask = LongTask(app, backend=ThreadBackend(1))
    app.register_blueprint(longtask.dashboard())
    for path in ("/", "/api/page", "/static/dashboard.js", "/jobs/" + "0" * 32):
        response = app.test_client().get(PREFIX + path)
        assert response.status_code == 403, path
    page = app.test_client().get(PREFIX + "/").get_data(as_text=True)
    assert "authorize" in page and "debug mode" in page
    app.debug = True
    assert app.test_client().get(PREFIX + "/").status_code == 200
    with pytest.raises(TypeError, match="authorize"):
        longtask.dashboard(authorize="yes")  # type: ignore[arg-type]


def test_authorize_runs_on_every_request(made: tuple[Flask, LongTask, threading.Event]) -> None:
    app, _, _ = made
    stranger = app.test_client()
    for path in ("/", "/api/page", "/static/dashboard.css", "/api/stream"):
        assert stranger.get(PREFIX + path).status_code == 403
    answer = stranger.post(PREFIX + "/api/purge", json={})
    assert answer.status_code == 403 and answer.get_json()["error"]["status"] == 403
    assert client(app).get(PREFIX + "/").status_code == 200


def test_pages_are_not_cached_nor_framed(made: tuple[Flask, LongTask, threading.Event]) -> None:
    app, _, _ = made
    response = client(app).get(PREFIX + "/")
    assert response.headers["Cache-Control"] == "no-store"
    assert "frame-ancestors 'none'" in response.headers["Content-Security-Policy"]
    assert response.headers["X-Frame-Options"] == "DENY"
    cookie = response.headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and f"Path={PREFIX}" in cookie
    # The page's token (which its script sends back) is the cookie's.
    page = response.get_data(as_text=True)
    assert f'<meta name="longtask-csrf" content="{cookie.split("=", 1)[1].split(";")[0]}">' in page


def test_cancel_and_purge_need_json_the_same_origin_and_the_pages_token(
    made: tuple[Flask, LongTask, threading.Event],
) -> None:
    app, longtask, gate = made
    c = client(app)
    token = token_of(c)
    with app.app_context():
        job = longtask._tasks["waits"].submit()
    url = f"{PREFIX}/api/jobs/{job.id}/cancel"
    good = {"X-LongTask-CSRF": token}
    assert c.post(url, data="{}", headers=good).status_code == 415  # a form's body, not JSON
    assert c.post(url, json={}).status_code == 403  # no token
    assert c.post(url, json={}, headers={"X-LongTask-CSRF": "x" * 43}).status_code == 403
    assert c.post(url, json={}, headers={**good, "Sec-Fetch-Site": "cross-site"}).status_code == 403
    assert c.post(url, json={}, headers={**good, "Origin": "https://evil.example"}).status_code == 403
    with app.app_context():
        assert job.status in (JobStatus.QUEUED, JobStatus.RUNNING)  # none of those did anything
    answer = c.post(url, json={}, headers={**good, "Origin": "http://localhost", "Sec-Fetch-Site": "same-origin"})
    assert answer.status_code == 200 and answer.get_json()["cancel_requested"] is True
    with app.app_context():
        assert job.wait(10) is JobStatus.CANCELLED
        done = longtask._tasks["double"].submit(2)
        done.result(timeout=10)
    assert c.post(f"{PREFIX}/api/jobs/{'0' * 32}/cancel", json={}, headers=good).status_code == 404
    assert c.post(PREFIX + "/api/purge", json={}, headers=good).get_json() == {"purged": 2}
    with app.app_context():
        assert longtask.jobs() == []


def test_the_table_its_filters_its_search_and_its_pages(made: tuple[Flask, LongTask, threading.Event]) -> None:
    app, longtask, gate = made
    with app.app_context():
        failed = longtask._tasks["fails"].submit("nope")
        failed.wait(10)
        running = longtask._tasks["waits"].submit()
        wait_for(lambda: running.progress == (1, 4), what="the job to report")
        doubled = [longtask._tasks["double"].submit(n) for n in range(55)]
        for job in doubled:
            job.wait(10)
    c = client(app)

    def ids(query: str) -> list[str]:
        table = c.get(f"{PREFIX}/api/page?{query}").get_json()["table"]
        return [part.split('"')[0] for part in table.split('<tr id="job-')[1:]]

    first = ids("")
    assert len(first) == views.PAGE and first[0] == doubled[-1].id  # newest first
    html = c.get(PREFIX + "/").get_data(as_text=True)
    assert f"before={first[-1]}" in html  # the link to the older jobs
    older = ids(f"before={first[-1]}")
    assert older == [job.id for job in reversed(doubled[:5])] + [running.id, failed.id]
    assert ids("status=failed") == [failed.id]
    assert ids("status=running") == [running.id]
    assert ids("task=fails") == [failed.id] and ids("task=double&status=failed") == []
    assert ids(f"q={failed.id[:20]}") == [failed.id]  # (its time, then some of its random part)
    assert ids(f"q={failed.id.upper()}") == [failed.id]
    around = ids(f"q={failed.id[:8]}")  # the jobs of the same minute or so: a page of them
    assert len(around) == views.PAGE and all(job_id.startswith(failed.id[:8]) for job_id in around)
    html = c.get(PREFIX + "/?status=running").get_data(as_text=True)
    running_row = html.split(f'id="job-{running.id}"')[1].split("</tr>")[0]
    assert 'value="0.250"' in running_row and "running" in running_row and "data-cancel" in running_row
    counts = c.get(f"{PREFIX}/api/page").get_json()["counts"]
    assert 'data-count="succeeded">55<' in counts and 'data-count="running">1<' in counts
    assert 'data-count="workers">4<' in counts
    for bad in ("status=lost", "q=xyz", "before=123", "task=" + "t" * 201):
        assert c.get(f"{PREFIX}/api/page?{bad}").status_code == 400, bad
    gate.set()


def test_a_job_page_shows_its_arguments_result_error_and_traceback(
    made: tuple[Flask, LongTask, threading.Event],
) -> None:
    app, longtask, _ = made
    app.config["LONGTASK_HTTP_ERRORS"] = "type"  # (the HTTP API's setting: the dashboard shows all)
    with app.app_context():
        failed = longtask._tasks["fails"].submit("it went <b>wrong</b>")
        failed.wait(10)
        done = longtask._tasks["double"].submit(21)
        done.wait(10)
    c = client(app)
    page = c.get(f"{PREFIX}/jobs/{failed.id}").get_data(as_text=True)
    assert "it went &lt;b&gt;wrong&lt;/b&gt;" in page and "<b>wrong" not in page  # escaped
    assert 'class="traceback"' in page and "Traceback (most recent call last)" in page
    assert "&#39;it went &lt;b&gt;wrong&lt;/b&gt;&#39;" in page  # the arguments, as recorded
    page = c.get(f"{PREFIX}/jobs/{done.id}").get_data(as_text=True)
    assert '<code class="result">42</code>' in page and '<code class="arguments">21</code>' in page
    assert c.get(f"{PREFIX}/jobs/{'0' * 32}").status_code == 404
    assert c.get(f"{PREFIX}/jobs/not-an-id").status_code == 404
    assert c.get(f"{PREFIX}/api/jobs/{'0' * 32}").get_json()["status"] == "gone"


def test_streams_are_limited_per_process_and_polled_past_the_limit(
    made: tuple[Flask, LongTask, threading.Event],
) -> None:
    app, _, _ = made
    app.config["LONGTASK_DASHBOARD_MAX_STREAMS"] = 1
    c = client(app)
    assert c.get(PREFIX + "/api/stream").status_code == 503  # one request at a time: no stream
    threaded = {"wsgi.multithread": True}
    held = c.get(PREFIX + "/api/stream", environ_overrides=threaded, buffered=False)
    assert held.status_code == 200 and held.mimetype == "text/event-stream"
    chunks = held.response
    assert next(chunks).startswith(b"retry: 1000")
    assert b"event: parts" in next(chunks)
    assert c.get(PREFIX + "/api/stream", environ_overrides=threaded).status_code == 503  # the one is taken
    held.close()  # the page went away: its stream is let go of
    again = c.get(PREFIX + "/api/stream", environ_overrides=threaded, buffered=False)
    assert again.status_code == 200
    again.close()


def test_settings_are_checked_at_init_app_and_when_it_is_registered() -> None:
    for key, value in (("LONGTASK_DASHBOARD_REFRESH", 0), ("LONGTASK_DASHBOARD_MAX_STREAMS", -1)):
        app = Flask(__name__)
        app.config[key] = value
        with pytest.raises(ValueError, match=key):
            LongTask(app, backend=ThreadBackend(1))
        app = Flask(__name__)
        longtask = LongTask(app, backend=ThreadBackend(1))
        app.config[key] = value  # (changed after init_app)
        with pytest.raises(ValueError, match=key):
            app.register_blueprint(longtask.dashboard(authorize=lambda: True))


def test_it_mounts_on_a_dash_apps_server() -> None:
    dash = pytest.importorskip("dash")
    dash_app = dash.Dash(__name__)
    dash_app.layout = dash.html.Div("hello")
    longtask = LongTask(dash_app.server, backend=ThreadBackend(1))
    dash_app.server.register_blueprint(longtask.dashboard(authorize=lambda: True))
    page = dash_app.server.test_client().get(PREFIX + "/")
    assert page.status_code == 200 and "No jobs" in page.get_data(as_text=True)


@pytest.mark.parametrize(
    "value, share",
    [
        (0.5, 0.5),
        ((3, 4), 0.75),
        ([5, 0], None),
        ({"done": 1, "total": 2}, 0.5),
        ({"current": 9, "total": 3}, 1.0),
        ({"percent": 40}, 0.4),
        (7, None),
        (True, None),
        (float("nan"), None),
        ("half", None),
    ],
)
def test_progress_values_that_say_how_far(value: t.Any, share: float | None) -> None:
    assert views.fraction(value) == share


def test_values_are_shown_short() -> None:
    assert "..." in views.shown("x" * 1000) and len(views.shown("x" * 1000)) <= 200
    assert views.shown(list(range(1000)), limit=30).endswith("...") and len(views.shown(list(range(1000)), 30)) == 30

    class Refuses:
        def __repr__(self) -> str:
            raise RuntimeError

    assert views.shown(Refuses()).startswith("<Refuses instance")  # (reprlib's, never an exception)
