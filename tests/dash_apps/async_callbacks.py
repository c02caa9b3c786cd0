"""``async def`` background callbacks (Dash's ``dash[async]``), for tests/test_dash_async.py.

The adapter makes each one's task a coroutine task. Worker processes import this module to find
those tasks; the app here (on a ThreadBackend) is only the app their jobs enter there, as in
tests/diskcache_jobs.py: the tests register the same extension on their own app, with a pool.
"""

from __future__ import annotations

import asyncio
import os

from dash import Dash, Input, Output, dcc, html, set_props

from dash_adapter import LongTaskManager
from flask_longtask import LongTask
from flask_longtask.backends import ThreadBackend

longtask = LongTask()
manager = LongTaskManager(longtask)
app = Dash(__name__, background_callback_manager=manager)
longtask.init_app(app.server, backend=ThreadBackend(workers=1))

app.layout = html.Div([dcc.Store(id="spec"), html.Div(id="out"), html.Div(id="note"), html.Div(id="side")])


@app.callback(
    Output("out", "children"),
    Input("spec", "data"),
    background=True,
    progress=Output("note", "children"),
    prevent_initial_call=True,
)
async def wait_then_answer(set_progress, spec):  # type: ignore[no-untyped-def]
    """Reports, sets a prop, then awaits ``spec["sleep"]`` seconds; logs its start and its
    ``finally`` to ``spec["log"]``; returns its pid."""
    _log(spec["log"], "started")
    try:
        set_progress("halfway")
        set_props("side", {"children": "set from the job"})
        await asyncio.sleep(spec["sleep"])
        return os.getpid()
    finally:
        _log(spec["log"], "cleanup")


def _log(path: str, line: str) -> None:
    with open(path, "a") as f:
        f.write(line + "\n")
