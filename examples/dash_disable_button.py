"""dash-labs long_callback, example 2 -- disable the button while the callback runs -- on Dash 4 and Flask-LongTask.

``running`` disables the button while the job runs and enables it again when it ends.

    python examples/dash_disable_button.py            # then open http://127.0.0.1:8050

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
        html.Div([html.P(id="paragraph_id", children=["Button not clicked"])]),
        html.Button(id="button_id", children="Run Job!"),
    ]
)


@app.callback(
    Output("paragraph_id", "children"),
    Input("button_id", "n_clicks"),
    background=True,
    running=[
        (Output("button_id", "disabled"), True, False),
    ],
)
def callback(n_clicks):
    time.sleep(2.0 * TIME_SCALE)
    return [f"Clicked {n_clicks} times"]


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=8050)
    app.run(port=parser.parse_args().port)
