"""dash-labs long_callback, example 6 -- caching results with cache_by -- on Dash 4 and Flask-LongTask.

Results are memoized: ``n_clicks`` cycles 1, 2, 3, 0, so from the fifth click on the answer
comes from the cache at once, without running the callback, in every tab. ``cache_by``
returns an id made at start-up, so a restart starts a fresh cache; entries live 60 seconds.

    python examples/dash_caching.py            # then open http://127.0.0.1:8050

``FLASK_LONGTASK_BACKEND`` (and any other ``FLASK_*`` variable) configures the server;
``EXAMPLE_TIME_SCALE=0.1`` makes the simulated work ten times shorter.
"""

from __future__ import annotations

import argparse
import os
import time
from uuid import uuid4

from dash import Dash, Input, Output, html

from dash_adapter import LongTaskManager
from flask_longtask import LongTask

TIME_SCALE = float(os.environ.get("EXAMPLE_TIME_SCALE", "1"))

launch_uid = uuid4()

longtask = LongTask()
app = Dash(
    __name__,
    background_callback_manager=LongTaskManager(longtask, cache_by=[lambda: launch_uid], expire=60),
)
app.server.config.from_prefixed_env()
longtask.init_app(app.server)
server = app.server  # the Flask app: for `flask --app <this file>:server longtask worker`, gunicorn

app.layout = html.Div(
    [
        html.Div([html.P(id="paragraph_id", children=["Button not clicked"])]),
        html.Button(id="button_id", children="Run Job!"),
        html.Button(id="cancel_button_id", children="Cancel Running Job!"),
    ]
)


@app.callback(
    Output("paragraph_id", "children"),
    Output("button_id", "n_clicks"),
    Input("button_id", "n_clicks"),
    background=True,
    running=[
        (Output("button_id", "disabled"), True, False),
        (Output("cancel_button_id", "disabled"), False, True),
    ],
    cancel=[Input("cancel_button_id", "n_clicks")],
)
def callback(n_clicks):
    time.sleep(2.0 * TIME_SCALE)
    return [f"Clicked {n_clicks} times"], (n_clicks or 0) % 4


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=8050)
    app.run(port=parser.parse_args().port)
