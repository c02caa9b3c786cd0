"""A Dash app whose background callbacks do what the request says, to test LongTaskManager.

The default manager runs each request apart; ``shared`` (single-flight) and the memoized ones
share jobs. Each callback takes a "spec" dict as its input (a ``dcc.Store``'s data): ``tag``
(names the run in the run log), ``steps``/``step`` (progress), ``props`` (``set_props`` calls;
``"wait"`` waits for the file ``flag``, or for a cancel, and then logs ``stopped``), ``sleep``,
``raise``, ``prevent``, ``die``. Every run appends its tag to the file ``DASH_TEST_RUN_LOG``, so
tests count runs across processes.
"""

from __future__ import annotations

import os
import signal
import time
import typing as t
import uuid

from dash import Dash, Input, Output, State, ctx, dcc, html, set_props
from dash.exceptions import PreventUpdate

from dash_adapter import LongTaskManager, long_callback
from flask_longtask import LongTask, current_job

RUN_LOG = os.environ.get("DASH_TEST_RUN_LOG", os.devnull)
LAUNCH = os.environ.get("DASH_TEST_LAUNCH", uuid.uuid4().hex)

longtask = LongTask()
manager = LongTaskManager(longtask)
memo_manager = LongTaskManager(longtask, cache_by=[lambda: LAUNCH], expire=60)
shared_manager = LongTaskManager(longtask, single_flight=True)
app = Dash(__name__, background_callback_manager=manager)
app.server.config.from_prefixed_env()
longtask.init_app(app.server)

app.layout = html.Div(
    [
        dcc.Store(id=name)
        for name in (
            "work",
            "err-in",
            "memo-in",
            "lc-in",
            "kw-in",
            "kw-state",
            "shared-in",
            "req-in",
            "ign-in",
            "ign-note",
        )
    ]
    + [
        html.Div(id=name)
        for name in (
            "out",
            "a",
            "b",
            "err-out",
            "memo-out",
            "lc-out",
            "kw-out",
            "shared-out",
            "req-out",
            "ign-out",
        )
    ]
    + [
        html.Progress(id="bar"),
        html.Progress(id="lc-bar"),
        html.Progress(id="shared-bar"),
        html.Button(id="shared-cancel"),
        html.Button(id="btn"),
        html.Button(id="cancel"),
    ]
)


def log_run(text: str) -> None:
    with open(RUN_LOG, "a") as log:  # O_APPEND: whole lines, even from several processes
        log.write(text + "\n")


def run(spec: dict[str, t.Any], set_progress: t.Callable[[t.Any], None] | None = None) -> str:
    log_run(f"start {spec['tag']}")
    for i in range(spec.get("steps", 0)):
        time.sleep(spec.get("step", 0.01))
        if set_progress is not None:
            set_progress(i + 1)
    for call in spec.get("props", []):
        if call == "wait":
            deadline = time.monotonic() + 30
            while not os.path.exists(spec["flag"]) and time.monotonic() < deadline:
                if current_job.is_cancel_requested:
                    log_run(f"stopped {spec['tag']}")
                    return "stopped"
                time.sleep(0.01)
        else:
            set_props(call[0], call[1])
    time.sleep(spec.get("sleep", 0))
    if spec.get("die"):
        os.kill(os.getpid(), signal.SIGKILL)
    if spec.get("raise"):
        raise ValueError(spec["raise"])
    if spec.get("prevent"):
        raise PreventUpdate
    log_run(f"end {spec['tag']}")
    return f"done {spec['tag']} by {ctx.triggered_id}"


@app.callback(
    Output("out", "children"),
    Input("work", "data"),
    background=True,
    progress=Output("bar", "value"),
    running=[(Output("btn", "disabled"), True, False)],
    cancel=Input("cancel", "n_clicks"),
    prevent_initial_call=True,
    interval=100,
)
def work(set_progress, spec):
    return run(spec, set_progress)


@app.callback(
    Output("err-out", "children"),
    Input("err-in", "data"),
    background=True,
    on_error=lambda exc: f"on_error: {exc}",
    prevent_initial_call=True,
)
def failing(spec):
    return run(spec)


@app.callback(
    Output("memo-out", "children"),
    Input("memo-in", "data"),
    background=True,
    manager=memo_manager,
    prevent_initial_call=True,
)
def memoized(spec):
    return run(spec)


@app.callback(
    Output("ign-out", "children"),
    Input("ign-in", "data"),
    State("ign-note", "data"),
    background=True,
    manager=memo_manager,
    cache_args_to_ignore=[1],
    prevent_initial_call=True,
)
def memoized_ignoring_note(spec, note):
    return f"{run(spec)} note {note}"


@app.callback(
    Output("shared-out", "children"),
    Input("shared-in", "data"),
    background=True,
    progress=Output("shared-bar", "value"),
    cancel=Input("shared-cancel", "n_clicks"),
    manager=shared_manager,
    prevent_initial_call=True,
    interval=100,
)
def shared(set_progress, spec):
    return run(spec, set_progress)


@app.callback(
    Output("req-out", "children"),
    Input("req-in", "data"),
    background=True,
    prevent_initial_call=True,
)
def request_data(spec):
    return {
        "cookie": ctx.cookies.get("who"),
        "header": ctx.headers.get("X-Who"),
        "path": ctx.path,
        "remote": ctx.remote,
        "args": sorted(ctx.args),
    }


@app.callback(
    Output("kw-out", "children"),
    inputs={"spec": Input("kw-in", "data"), "extra": State("kw-state", "data")},
    background=True,
    prevent_initial_call=True,
)
def keywords(spec, extra):
    return f"{run(spec)} with {extra} and {ctx.args_grouping['extra'].value}"


@long_callback(
    app,
    output=Output("lc-out", "children"),
    args=Input("lc-in", "data"),
    progress=Output("lc-bar", ("value", "max")),
    prevent_initial_call=True,
    interval=100,
)
def legacy(set_progress, spec):
    set_progress((1, 2))
    return f"legacy {run(spec)}"
