"""dash-labs long_callback, example 4 -- a progress bar -- on Dash 4 and Flask-LongTask.

``progress`` feeds an ``html.Progress`` bar: the callback gets ``set_progress`` first.

    python examples/dash_progress_bar.py            # then open http://127.0.0.1:8050

``FLASK_LONGTASK_BACKEND`` (and any other ``FLASK_*`` variable) configures the server;
``EXAMPLE_TIME_SCALE=0.1`` makes the simulated work ten times shorter.
"""

from __future__ import annotations

import argparse
import os
import time

from dash import Dash, Input, Output, html

from dash_adapter import LongTaskManager
from flask_longtask import LongTask

TIME_SCALE = float(os.environ.get("EXAMPLE_TIME_SCALE", "1"))

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
                html.Progress(id="progress_bar", value="0"),
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
            Output("progress_bar", "style"),
            {"visibility": "visible"},
            {"visibility": "hidden"},
        ),
    ],
    cancel=[Input("cancel_button_id", "n_clicks")],
    # dash-labs wrote Output("progress_bar", ("value", "max")); Dash 4 takes one Output per prop.
    progress=[Output("progress_bar", "value"), Output("progress_bar", "max")],
)
def callback(set_progress, n_clicks):
    total = 10
    for i in range(total):
        time.sleep(0.5 * TIME_SCALE)
        set_progress((str(i + 1), str(total)))
    return [f"Clicked {n_clicks} times"]


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=8050)
    app.run(port=parser.parse_args().port)
