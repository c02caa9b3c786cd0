"""dash_adapter.long_callback maps the dash-labs arguments onto Dash 4's background callbacks."""

from __future__ import annotations

import dash
import pytest
from dash import Input, Output

from dash_adapter import LongTaskManager, long_callback
from flask_longtask import LongTask
from flask_longtask.backends import ThreadBackend


@pytest.fixture
def dash_app():
    longtask = LongTask()
    app = dash.Dash(__name__, background_callback_manager=LongTaskManager(longtask))
    longtask.init_app(app.server, backend=ThreadBackend(1))
    yield app
    app.server.extensions["longtask"].backend.close()


def test_every_seed_argument_reaches_dash(dash_app):
    def launch_id() -> str:
        return "launch-1"

    @long_callback(
        dash_app,
        output=Output("p", "children"),
        args=Input("b", "n_clicks"),
        running=[(Output("b", "disabled"), True, False)],
        cancel=[Input("c", "n_clicks")],
        progress=Output("bar", ("value", "max")),  # dash-labs' shorthand for two outputs
        progress_default=["0", "10"],
        interval=500,
        cache_by=[launch_id],
        expire=5,
        prevent_initial_call=True,
        on_error=lambda exc: str(exc),
    )
    def callback(set_progress, n_clicks):
        return n_clicks

    spec = dash_app.callback_map["p.children"]
    background = spec["background"]
    assert background["interval"] == 500
    assert [str(o) for o in background["progress"]] == ["bar.value", "bar.max"]
    assert background["progressDefault"] == ["0", "10"]
    assert background["cancel"] == [{"id": "c", "property": "n_clicks"}]
    manager = background["manager"]
    assert isinstance(manager, LongTaskManager)
    assert manager.cache_by == [launch_id] and manager.expire == 5
    assert manager is not dash_app._background_manager  # the app's own manager is untouched


def test_a_single_progress_output_stays_single(dash_app):
    @long_callback(
        dash_app, output=Output("q", "children"), args=Input("b2", "n_clicks"), progress=Output("bar2", "value")
    )
    def callback(set_progress, n_clicks):
        return n_clicks

    assert [str(o) for o in dash_app.callback_map["q.children"]["background"]["progress"]] == ["bar2.value"]
