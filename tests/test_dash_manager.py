"""LongTaskManager over real HTTP: a real server process, driven as dash-renderer drives it.

Each behaviour the issue asks of the manager is checked on the thread backend and on the
diskcache backend (a shared pool of worker processes), against ``tests/dash_apps/behaviour.py``.
"""

from __future__ import annotations

import sys
import typing as t
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from threading import Barrier

import dash
import flask
import pytest

from dash_adapter import LongTaskManager, long_callback
from flask_longtask import LongTask
from flask_longtask.backends import ThreadBackend

from .browser import free_port, live_server_process
from .dash_apps.client import Callback, DashPage, Job, dep
from .helpers import wait_for

ROOT = Path(__file__).resolve().parent.parent

WORK = Callback("out.children", dep("out", "children"), [])
FAILING = Callback("err-out.children", dep("err-out", "children"), [])
MEMO = Callback("memo-out.children", dep("memo-out", "children"), [])
LEGACY = Callback("lc-out.children", dep("lc-out", "children"), [])
SHARED = Callback("shared-out.children", dep("shared-out", "children"), [])
REQUEST = Callback("req-out.children", dep("req-out", "children"), [])
CANCEL = Callback("cancel.id", dep("cancel", "id"), [dep("cancel", "n_clicks", 1)])
CANCEL_SHARED = Callback("shared-cancel.id", dep("shared-cancel", "id"), [dep("shared-cancel", "n_clicks", 1)])

INPUTS = {
    "out.children": "work",
    "err-out.children": "err-in",
    "memo-out.children": "memo-in",
    "lc-out.children": "lc-in",
    "shared-out.children": "shared-in",
    "req-out.children": "req-in",
}


class Server:
    def __init__(self, url: str, backend: str, run_log: Path, tmp: Path) -> None:
        self.url, self.backend, self.run_log, self.tmp = url, backend, run_log, tmp

    def page(self, headers: dict[str, str] | None = None) -> DashPage:
        return DashPage(self.url, headers=headers)

    def runs(self, tag: str) -> list[str]:
        lines = self.run_log.read_text().splitlines() if self.run_log.exists() else []
        return [line.split()[0] for line in lines if line.split()[1] == tag]


def with_spec(callback: Callback, **spec: t.Any) -> Callback:
    return Callback(callback.output, callback.outputs, [dep(INPUTS[callback.output], "data", spec)])


def tag() -> str:
    return uuid.uuid4().hex[:12]


@pytest.fixture(scope="module", params=["thread", "diskcache"])
def server(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> t.Iterator[Server]:
    tmp = tmp_path_factory.mktemp(f"dash-{request.param}")
    run_log = tmp / "runs.log"
    env = {
        "FLASK_LONGTASK_BACKEND": request.param,
        "FLASK_LONGTASK_DISKCACHE_DIR": str(tmp / "longtask"),
        "FLASK_LONGTASK_WORKERS": "4",
        "DASH_TEST_RUN_LOG": str(run_log),
        "PYTHONPATH": str(ROOT),
    }
    port = free_port()
    cmd = [
        sys.executable,
        "-m",
        "tests.dash_apps.serve",
        "tests.dash_apps.behaviour",
        "--port",
        str(port),
    ]
    with live_server_process(cmd, port, env=env, cwd=ROOT) as url:
        yield Server(url, request.param, run_log, tmp)


# -- Dash's manager interface --------------------------------------------------------------------


def test_manager_plugs_into_dash_both_ways() -> None:
    server = flask.Flask(__name__)
    longtask = LongTask(server, backend=ThreadBackend(workers=1))
    manager, other = LongTaskManager(longtask), LongTaskManager(longtask)
    app = dash.Dash(__name__, server=server, background_callback_manager=manager)

    @app.callback(dash.Output("x", "children"), dash.Input("y", "n_clicks"), background=True)
    def by_app(n: int) -> str:
        return "app"

    @app.callback(
        dash.Output("z", "children"),
        dash.Input("y", "n_clicks"),
        background=True,
        manager=other,
    )
    def by_callback(n: int) -> str:
        return "callback"

    assert app._background_manager is manager
    assert app.callback_map["z.children"]["manager"] is other
    # One task per callback, in every manager (Dash registers every background function with
    # every manager), named after the function so a worker process finds it by name.
    for m in (manager, other):
        names = {task.name for task in m.func_registry.values()}
        assert any(name.startswith(f"{__name__}.{by_app.__qualname__}:dash-") for name in names)
        assert any(name.startswith(f"{__name__}.{by_callback.__qualname__}:dash-") for name in names)


def test_manager_rejects_bad_arguments() -> None:
    with pytest.raises(TypeError, match="'LongTask' instance"):
        LongTaskManager(object())  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="cache_by"):
        LongTaskManager(LongTask(), cache_by=[1])  # type: ignore[list-item]


def test_long_callback_needs_a_longtask_manager() -> None:
    app = dash.Dash(__name__)
    with pytest.raises(TypeError, match="needs a LongTaskManager"):
        long_callback(app, output=dash.Output("a", "children"), args=dash.Input("b", "n_clicks"))


# -- behaviours, over HTTP -------------------------------------------------------------------------


def test_result_and_callback_context_reach_the_browser(server: Server) -> None:
    name = tag()
    answer = server.page().start(with_spec(WORK, tag=name)).run()
    assert answer.response == {"out": {"children": f"done {name} by work"}}
    assert server.runs(name) == ["start", "end"]


def test_keyword_grouping_and_state(server: Server) -> None:
    name = tag()
    callback = Callback(
        "kw-out.children",
        dep("kw-out", "children"),
        [dep("kw-in", "data", {"tag": name})],
        [dep("kw-state", "data", "S")],
    )
    answer = server.page().start(callback).run()
    assert answer.response == {"kw-out": {"children": f"done {name} by kw-in with S and S"}}


def test_each_progress_value_reaches_a_page_once(server: Server) -> None:
    job = server.page().start(with_spec(WORK, tag=tag(), steps=15, step=0.04))
    final = job.run(interval=0.02)
    seen = [p.progress["bar.value"] for p in job.polls if p.progress]
    # A value comes with the first poll after the job reports it, and never again (Dash's
    # managers too: a chained callback fires once per value); polled faster than the job
    # reports, most polls bring nothing ...
    assert seen == sorted(set(seen)), seen
    assert len(seen) > 3  # polled while it moved
    assert len(job.polls) > len(seen)
    # ... and the final value is never lost: with the result, or on an earlier poll.
    assert seen[-1] == 15
    assert final.response is not None


def test_a_page_that_joins_late_gets_the_latest_progress_at_once(server: Server) -> None:
    name = tag()
    flag = server.tmp / f"{name}.flag"
    spec = with_spec(SHARED, tag=name, steps=3, props=["wait"], flag=str(flag))
    first = server.page().start(spec)
    wait_for(lambda: first.poll().progress == {"shared-bar.value": 3}, what="the last step")
    assert first.poll().progress is None  # nothing new for this page
    late = server.page().start(spec)
    assert late.job_id == first.job_id
    assert late.poll().progress == {"shared-bar.value": 3}  # the latest, at its first poll
    assert late.poll().progress is None
    flag.touch()
    assert late.run().response == first.run().response == {"shared-out": {"children": f"done {name} by shared-in"}}
    assert first.polls[-1].progress is None  # had it already: not given twice


def test_set_props_since_last_poll_merged_per_component(server: Server) -> None:
    flag = server.tmp / f"flag-{tag()}"
    props = [
        ["a", {"children": 1}],
        ["a", {"title": "x"}],
        ["b", {"children": 2}],
        ["a", {"children": 3}],
        "wait",
        ["b", {"children": 4}],
    ]
    spec = with_spec(SHARED, tag=tag(), props=props, flag=str(flag))
    first, second = server.page(), server.page()  # two tabs, sharing one job (single-flight)
    job = first.start(spec)
    other = second.start(spec)
    assert other.job_id == job.job_id

    def merged(j: Job) -> dict[str, dict[str, t.Any]]:
        out: dict[str, dict[str, t.Any]] = {}
        for poll in j.polls:
            for component, values in (poll.side_update or {}).items():
                out.setdefault(component, {}).update(values)
        return out

    before = {"a": {"children": 3, "title": "x"}, "b": {"children": 2}}
    for j in (job, other):
        wait_for(
            lambda j=j: j.poll() and merged(j) == before,
            what="the first set_props calls",
        )
    assert job.poll().side_update is None  # nothing new: nothing re-sent
    count = len(job.polls)
    flag.touch()
    job.run(interval=0.02)
    after: dict[str, dict[str, t.Any]] = {}
    for poll in job.polls[count:]:
        for component, values in (poll.side_update or {}).items():
            after.setdefault(component, {}).update(values)
    assert after == {"b": {"children": 4}}
    assert other.run(interval=0.02).response is not None
    assert merged(other) == {"a": {"children": 3, "title": "x"}, "b": {"children": 4}}


def test_cancel_ends_the_spinner_at_the_next_poll(server: Server) -> None:
    name = tag()
    page = server.page()
    job = page.start(with_spec(WORK, tag=name, steps=200, step=0.05))
    wait_for(
        lambda: (p := job.poll()).progress and p.progress["bar.value"] >= 2,
        what="the job to start",
    )
    cancel = page.post(page.body(CANCEL), cancelJob=job.job)
    assert cancel.status == 200 and cancel.response == {}  # the cancel callback updates nothing
    # The very next poll answers 204, whatever the job is doing: that is how the renderer
    # learns the job is gone, and it then resets the `running` outputs.
    assert job.poll().status == 204
    assert server.runs(name) == ["start"]  # it never finished


def test_error_reaches_on_error(server: Server) -> None:
    answer = server.page().start(with_spec(FAILING, tag=tag(), **{"raise": "boom in the job"})).run()
    assert answer.status == 200
    text = answer.response["err-out"]["children"]  # type: ignore[index]
    assert text.startswith("on_error: An error occurred inside a background callback: boom in the job")
    assert "ValueError" in text  # the job's traceback


def test_error_without_on_error_is_a_server_error(server: Server) -> None:
    answer = server.page().start(with_spec(WORK, tag=tag(), **{"raise": "boom"})).run()
    assert answer.status == 500


def test_prevent_update_in_the_job_is_a_204(server: Server) -> None:
    assert server.page().start(with_spec(WORK, tag=tag(), prevent=True)).run().status == 204


def test_single_flight_identical_concurrent_requests_run_once_and_all_get_the_result(
    server: Server,
) -> None:
    name = tag()
    flag = server.tmp / f"{name}.flag"
    # The job holds until every tab has asked (a gate, not a guess at how long that takes).
    spec = with_spec(SHARED, tag=name, props=["wait"], flag=str(flag))
    started = Barrier(20)

    def one_tab(_: int) -> tuple[str, t.Any]:
        job = server.page().start(spec)
        started.wait(timeout=60)  # all 20 requests are in before the job may end
        flag.touch()
        return job.job_id, job.run(interval=0.05).response

    with ThreadPoolExecutor(20) as pool:
        answers = list(pool.map(one_tab, range(20)))
    assert len({job_id for job_id, _ in answers}) == 1
    assert [response for _, response in answers] == [{"shared-out": {"children": f"done {name} by shared-in"}}] * 20
    assert server.runs(name) == ["start", "end"]


@pytest.mark.parametrize("count", [20, 200])
def test_many_concurrent_callbacks_all_complete(server: Server, count: int) -> None:
    names = [tag() for _ in range(count)]

    def one(name: str) -> t.Any:
        return server.page().start(with_spec(WORK, tag=name, sleep=0.01)).run(interval=0.05, timeout=60).response

    with ThreadPoolExecutor(min(count, 50)) as pool:
        answers = list(pool.map(one, names))
    assert answers == [{"out": {"children": f"done {name} by work"}} for name in names]


def test_memoized_hit_starts_nothing(server: Server) -> None:
    name = tag()
    spec = with_spec(MEMO, tag=name, sleep=0.2)
    first = server.page().start(spec)
    assert first.run().response == {"memo-out": {"children": f"done {name} by memo-in"}}
    second = server.page().start(spec)
    assert second.job_id == first.job_id  # the finished job answers: no new job, no process
    assert second.poll().response == {"memo-out": {"children": f"done {name} by memo-in"}}
    assert len(second.polls) == 1
    assert server.runs(name) == ["start", "end"]


def test_cache_args_to_ignore_leaves_them_out_of_the_memo_key(server: Server) -> None:
    name = tag()

    def fire(note: str) -> Job:
        spec = {"tag": name, "sleep": 0.1}
        callback = Callback(
            "ign-out.children",
            dep("ign-out", "children"),
            [dep("ign-in", "data", spec)],
            [dep("ign-note", "data", note)],
        )
        return server.page().start(callback)

    first = fire("first")
    expected = {"ign-out": {"children": f"done {name} by ign-in note first"}}
    assert first.run().response == expected
    second = fire("second")  # only the ignored State differs: the cached answer
    assert second.job_id == first.job_id
    assert second.run().response == expected
    assert server.runs(name) == ["start", "end"]


def test_long_callback_progress_shorthand(server: Server) -> None:
    name = tag()
    answer = server.page().start(with_spec(LEGACY, tag=name)).run()
    assert answer.response == {"lc-out": {"children": f"legacy done {name} by lc-in"}}
    assert answer.progress == {"lc-bar.value": 1, "lc-bar.max": 2}


# A thread cannot die alone (killing it kills the server): this one is for process backends.
@pytest.mark.parametrize("server", ["diskcache"], indirect=True)
def test_dead_worker_ends_with_an_error(server: Server) -> None:
    answer = server.page().start(with_spec(FAILING, tag=tag(), die=True)).run(timeout=20)
    assert answer.status == 200
    assert "died" in answer.response["err-out"]["children"]  # type: ignore[index]


def test_identical_requests_run_apart_by_default(server: Server) -> None:
    name = tag()
    flag = server.tmp / f"{name}.flag"
    spec = with_spec(WORK, tag=name, props=["wait"], flag=str(flag))
    first, second = server.page().start(spec), server.page().start(spec)  # both in flight
    assert first.job_id != second.job_id
    flag.touch()
    for job in (first, second):
        assert job.run().response == {"out": {"children": f"done {name} by work"}}
    assert sorted(server.runs(name)) == ["end", "end", "start", "start"]  # two runs, however they overlap


def test_the_job_gets_the_request_cookies_headers_path_remote_and_args(server: Server) -> None:
    page = server.page(headers={"Cookie": "who=alice", "X-Who": "header-alice"})
    answer = page.start(with_spec(REQUEST, tag=tag())).run()
    assert answer.response == {
        "req-out": {
            "children": {
                "cookie": "alice",
                "header": "header-alice",
                "path": f"/_dash-update-component?endId={page.end_id}",
                "remote": "127.0.0.1",
                "args": ["endId"],
            }
        }
    }


def shared_spec(name: str, flag: Path) -> Callback:
    return with_spec(SHARED, tag=name, props=["wait"], flag=str(flag))


def shared_job(server: Server, pages: int) -> tuple[str, Path, list[Job]]:
    """``pages`` pages on one shared job that waits for its flag file, each polled once."""
    name = tag()
    flag = server.tmp / f"{name}.flag"
    spec = shared_spec(name, flag)
    jobs = [server.page().start(spec) for _ in range(pages)]
    assert len({job.job_id for job in jobs}) == 1
    wait_for(lambda: server.runs(name) == ["start"], what="the job to start")
    for job in jobs:
        assert job.poll().status == 200 and job.polls[-1].response is None
    return name, flag, jobs


def cancel(job: Job) -> None:
    answer = job.page.post(job.page.body(CANCEL_SHARED), cancelJob=job.job)
    assert answer.status == 200


def test_a_page_that_cancels_a_shared_job_leaves_it_to_the_others(server: Server) -> None:
    name, flag, (first, second) = shared_job(server, 2)
    cancel(first)
    assert first.poll().status == 204  # its spinner stops, its progress_default returns
    assert second.poll().status == 200 and second.polls[-1].response is None  # still running
    flag.touch()
    assert second.run().response == {"shared-out": {"children": f"done {name} by shared-in"}}
    assert server.runs(name) == ["start", "end"]


def test_the_last_page_to_leave_a_shared_job_cancels_it(server: Server) -> None:
    name, flag, (first, second) = shared_job(server, 2)
    cancel(first)
    assert server.runs(name) == ["start"]
    cancel(second)
    assert second.poll().status == 204
    wait_for(lambda: server.runs(name) == ["start", "stopped"], what="the job to see its cancel")
    again = server.page().start(shared_spec(name, flag))  # does not join the cancelled job
    assert again.job_id != first.job_id
    flag.touch()
    assert again.run().response == {"shared-out": {"children": f"done {name} by shared-in"}}
    assert server.runs(name) == ["start", "stopped", "start", "end"]


def test_a_page_that_starts_the_callback_again_leaves_its_shared_job(server: Server) -> None:
    name, flag, (first, second) = shared_job(server, 2)
    other = tag()
    # Dash's renderer names the page's running job (oldJob) when it starts the callback again.
    again = first.page.start(with_spec(SHARED, tag=other), oldJob=first.job)
    assert first.poll().status == 204
    assert again.run().response == {"shared-out": {"children": f"done {other} by shared-in"}}
    flag.touch()
    assert second.run().response == {"shared-out": {"children": f"done {name} by shared-in"}}
    assert server.runs(name) == ["start", "end"]
