"""An ``async def`` background callback that cleans up when it is cancelled (Dash's ``dash[async]``).

Run works in steps, each an ``await`` (an HTTP call or a query in a real app), keeping a scratch
file while it runs. Cancel reaches it as ``asyncio.CancelledError`` at its next ``await``: its
``finally:`` removes the scratch file, and the job ends cancelled. "Count scratch files" shows
what is left: one while a run is on, none once it ended or was cancelled. On the default
backend the job runs on a worker of coroutine jobs, beside up to ``LONGTASK_ASYNC_CONCURRENCY``
others (see docs/async.md).

    pip install "flask-longtask[dash]" "dash[async]"
    python examples/dash_async_cleanup.py     # then open http://127.0.0.1:8050

``FLASK_LONGTASK_BACKEND`` (and any other ``FLASK_*`` variable) configures the server;
``EXAMPLE_TIME_SCALE=0.1`` makes the steps ten times shorter; ``EXAMPLE_SCRATCH_DIR`` is where
the scratch files go (a folder in the system's temporary directory by default).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import tempfile
import uuid
from pathlib import Path

from dash import Dash, Input, Output, html

from dash_adapter import LongTaskManager
from flask_longtask import LongTask

TIME_SCALE = float(os.environ.get("EXAMPLE_TIME_SCALE", "1"))
SCRATCH = Path(os.environ.get("EXAMPLE_SCRATCH_DIR") or os.path.join(tempfile.gettempdir(), "dash-async-cleanup"))
STEPS = 10

longtask = LongTask()
# use_async=True: async callbacks need dash[async]; without it Dash says so here, at the start.
app = Dash(__name__, background_callback_manager=LongTaskManager(longtask), use_async=True)
app.server.config.from_prefixed_env()
longtask.init_app(app.server)
server = app.server  # the Flask app: for `flask --app <this file>:server longtask worker`, gunicorn

app.layout = html.Div(
    [
        html.Button(id="run", children="Run"),
        html.Button(id="cancel", children="Cancel", disabled=True),
        html.P(id="status", children="Not started"),
        html.P(id="result"),
        html.Button(id="count", children="Count scratch files"),
        html.P(id="left"),
    ]
)


@app.callback(
    Output("result", "children"),
    Input("run", "n_clicks"),
    background=True,
    running=[(Output("run", "disabled"), True, False), (Output("cancel", "disabled"), False, True)],
    cancel=[Input("cancel", "n_clicks")],
    progress=Output("status", "children"),
    prevent_initial_call=True,
)
async def work(set_progress, n_clicks):  # type: ignore[no-untyped-def]
    SCRATCH.mkdir(parents=True, exist_ok=True)
    scratch = SCRATCH / f"{uuid.uuid4().hex}.part"
    scratch.touch()
    try:
        for step in range(1, STEPS + 1):
            set_progress(f"Step {step} of {STEPS}")
            await asyncio.sleep(0.5 * TIME_SCALE)  # a cancel lands here, at once: CancelledError
            with scratch.open("a") as f:
                f.write(f"step {step} done\n")
        return f"Run {n_clicks} done: {STEPS} steps"
    finally:  # on a cancel too
        scratch.unlink(missing_ok=True)


@app.callback(Output("left", "children"), Input("count", "n_clicks"))
def count(_):  # type: ignore[no-untyped-def]
    return f"{len(list(SCRATCH.glob('*.part')))} scratch files"


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=8050)
    app.run(port=parser.parse_args().port)
