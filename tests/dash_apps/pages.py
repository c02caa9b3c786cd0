"""A Dash app for the browser tests of what each page sees (``tests/test_dash_pages.py``).

* **count**: a background callback reports five progress values; a clientside callback chained
  on the progress output logs each value it is fired with, and counts its calls.
* **cookie**: one callback sets a cookie; a background callback reads it (``ctx.cookies``).
* **shared**: a memoized callback (``cache_by``): pages with equal inputs share one job.
* **plain**: the same without ``cache_by``: each request runs its own job.

The jobs of ``shared`` and ``plain`` run until the test creates the file ``<DASH_TEST_DIR>/<value>``
(or the job is cancelled): the test decides when each ends. Every run appends ``start <value>``
and ``end <value>`` to ``<DASH_TEST_DIR>/runs.log``, so tests count runs across processes.
"""

from __future__ import annotations

import os
import time

from dash import Dash, Input, Output, State, clientside_callback, ctx, dcc, html

from dash_adapter import LongTaskManager
from flask_longtask import LongTask, current_job

DIR = os.environ.get("DASH_TEST_DIR", os.devnull)
LAUNCH = os.environ.get("DASH_TEST_LAUNCH", "")

longtask = LongTask()
shared = LongTaskManager(longtask, cache_by=[lambda: LAUNCH], expire=60)
app = Dash(__name__, background_callback_manager=LongTaskManager(longtask))
app.server.config.from_prefixed_env()
longtask.init_app(app.server)
server = app.server


def log_run(text: str) -> None:
    with open(os.path.join(DIR, "runs.log"), "a") as log:  # O_APPEND: whole lines, from any process
        log.write(text + "\n")


def wait_for_release(value: str) -> str:
    """The job's work: wait until the test creates the file named ``value`` (or a cancel)."""
    log_run(f"start {value}")
    deadline = time.monotonic() + 60
    while not os.path.exists(os.path.join(DIR, value)):
        if current_job.is_cancel_requested or time.monotonic() > deadline:
            log_run(f"stopped {value}")
            return "stopped"
        time.sleep(0.01)
    log_run(f"end {value}")
    return f"result {value}"


def inputs(name: str) -> list[object]:
    return [
        dcc.Input(id=f"{name}-in", value=""),
        html.Button("Go", id=f"{name}-go"),
        html.Button("Cancel", id=f"{name}-cancel"),
        html.Div("idle", id=f"{name}-status"),
        html.Div(id=f"{name}-out"),
    ]


app.layout = html.Div(
    [
        html.Button("Count", id="count-go"),
        html.Div(id="count-progress"),
        html.Div("0", id="count-calls"),
        html.Div("", id="count-log"),
        html.Div(id="count-out"),
        html.Button("Set cookie", id="cookie-set"),
        html.Div(id="cookie-set-out"),
        html.Button("Use cookie", id="cookie-use"),
        html.Div(id="cookie-out"),
        *inputs("shared"),
        *inputs("plain"),
    ]
)

# Fired with each progress value the page is given: counts the calls, and logs the values.
clientside_callback(
    """function(value, calls, log) {
        return [String(parseInt(calls) + 1), log ? log + "," + value : String(value)];
    }""",
    Output("count-calls", "children"),
    Output("count-log", "children"),
    Input("count-progress", "children"),
    State("count-calls", "children"),
    State("count-log", "children"),
    prevent_initial_call=True,
)


@app.callback(
    Output("count-out", "children"),
    Input("count-go", "n_clicks"),
    progress=Output("count-progress", "children"),
    interval=100,
    background=True,
    prevent_initial_call=True,
)
def count(set_progress, n_clicks):
    for i in range(1, 6):
        set_progress(f"step{i}")
        time.sleep(0.3)  # the job's work
    return "counted"


@app.callback(
    Output("cookie-set-out", "children"),
    Input("cookie-set", "n_clicks"),
    prevent_initial_call=True,
)
def set_cookie(n_clicks):
    ctx.response.set_cookie("dash-user", f"user-{LAUNCH}")
    return "set"


@app.callback(
    Output("cookie-out", "children"),
    Input("cookie-use", "n_clicks"),
    background=True,
    prevent_initial_call=True,
)
def use_cookie(n_clicks):
    return f"{ctx.cookies.get('dash-user')} at {ctx.path.split('?')[0]} from {ctx.remote}"


def background(name: str, manager: LongTaskManager | None) -> None:
    @app.callback(
        Output(f"{name}-out", "children"),
        Input(f"{name}-go", "n_clicks"),
        State(f"{name}-in", "value"),
        running=[(Output(f"{name}-status", "children"), "running", "idle")],
        cancel=Input(f"{name}-cancel", "n_clicks"),
        cache_args_to_ignore=[0],
        background=True,
        manager=manager,
        prevent_initial_call=True,
        interval=100,
    )
    def run(n_clicks, value):
        return wait_for_release(value)


background("shared", shared)
background("plain", None)

if __name__ == "__main__":  # pragma: no cover
    app.run()
