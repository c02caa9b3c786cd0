"""dash-labs long_callback, example 5 -- a progress bar chart -- on Dash 4 and Flask-LongTask.

``progress`` can update any property: here a plotly bar chart, with ``progress_default``
showing an empty bar whenever no job runs.

    python examples/dash_progress_graph.py            # then open http://127.0.0.1:8050

``FLASK_LONGTASK_BACKEND`` (and any other ``FLASK_*`` variable) configures the server;
``EXAMPLE_TIME_SCALE=0.1`` makes the simulated work ten times shorter.
"""

from __future__ import annotations

import argparse
import os
import time

import plotly.graph_objects as go
from dash import Dash, Input, Output, dcc, html

from dash_adapter import LongTaskManager
from flask_longtask import LongTask

TIME_SCALE = float(os.environ.get("EXAMPLE_TIME_SCALE", "1"))


def make_progress_graph(progress, total):
    progress_graph = (
        go.Figure(data=[go.Bar(x=[progress])])
        .update_xaxes(range=[0, total])
        .update_yaxes(showticklabels=False)
        .update_layout(height=100, margin={"t": 20, "b": 40})
    )
    return progress_graph


longtask = LongTask()
app = Dash(__name__, background_callback_manager=LongTaskManager(longtask))
app.server.config.from_prefixed_env()
longtask.init_app(app.server)
server = app.server  # the Flask app: for `flask --app <this file>:server longtask worker`, gunicorn

app.layout = html.Div(
    [
        html.Div(
            [
                html.P(id="paragraph_id", children=["Button not clicked"]),
                dcc.Graph(id="progress_bar_graph", figure=make_progress_graph(0, 10)),
            ]
        ),
        html.Button(id="button_id", children="Run Job!"),
        html.Button(id="cancel_button_id", children="Cancel Running Job!"),
    ]
)


@app.callback(
    Output("paragraph_id", "children"),
    Input("button_id", "n_clicks"),
    background=True,
    running=[
        (Output("button_id", "disabled"), True, False),
        (Output("cancel_button_id", "disabled"), False, True),
        (
            Output("paragraph_id", "style"),
            {"visibility": "hidden"},
            {"visibility": "visible"},
        ),
        (
            Output("progress_bar_graph", "style"),
            {"visibility": "visible"},
            {"visibility": "hidden"},
        ),
    ],
    cancel=[Input("cancel_button_id", "n_clicks")],
    progress=Output("progress_bar_graph", "figure"),
    progress_default=make_progress_graph(0, 10),
    interval=1000,
)
def callback(set_progress, n_clicks):
    total = 10
    for i in range(total):
        time.sleep(0.5 * TIME_SCALE)
        set_progress(make_progress_graph(i, 10))
    return [f"Clicked {n_clicks} times"]


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=8050)
    app.run(port=parser.parse_args().port)
