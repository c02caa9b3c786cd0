"""A Dash script without ``if __name__ == "__main__":`` in a real headless Chromium (issue 22).

Every pool worker imports the script again, and used to run its ``app.run()``: "port in use",
the job failed "lost", and the page showed nothing. Now ``app.run()`` raises in the worker,
naming the fix, the job fails with that error, and Dash shows it as it shows any failed
callback: in its dev tools (``debug=True``).
"""

from __future__ import annotations

import sys
import textwrap
import typing as t
from pathlib import Path

import pytest

from .browser import chrome, free_port, live_server_process
from .helpers import wait_for
from .services import ROOT

if t.TYPE_CHECKING:  # pragma: no cover
    from selenium.webdriver.chrome.webdriver import WebDriver

__all__ = ["chrome"]  # a fixture: importing it here is how pytest finds it

pytestmark = pytest.mark.xdist_group("dash-browser")

SCRIPT = """\
import os

from dash import Dash, Input, Output, html

from dash_adapter import LongTaskManager
from flask_longtask import LongTask

longtask = LongTask()
app = Dash(__name__, background_callback_manager=LongTaskManager(longtask))
app.server.config["LONGTASK_WORKERS"] = app.server.config["LONGTASK_MAX_WORKERS"] = 2
longtask.init_app(app.server)

app.layout = html.Div([html.P(id="out", children="not clicked"), html.Button("Run", id="run")])


@app.callback(Output("out", "children"), Input("run", "n_clicks"), background=True, prevent_initial_call=True)
def run(n_clicks):
    return f"clicked {n_clicks}"


app.run(port=int(os.environ["PORT"]), debug=True)  # no guard: every worker imports this again
"""


def test_a_dash_script_without_the_guard_shows_the_error_in_the_browser(tmp_path: Path, chrome: WebDriver) -> None:
    from selenium.webdriver.common.by import By

    (tmp_path / "app.py").write_text(textwrap.dedent(SCRIPT))
    port = free_port()
    env = {"PORT": str(port), "PYTHONPATH": str(ROOT)}
    with live_server_process([sys.executable, "app.py"], port, env=env, cwd=tmp_path) as url:
        chrome.get(url)
        wait_for(lambda: chrome.find_elements(By.ID, "run"), 30, "the page")
        chrome.find_element(By.ID, "run").click()
        # Dash's dev tools count the failed callback and open their Errors panel by themselves;
        # the error, unfolded, shows its message.
        wait_for(lambda: chrome.find_elements(By.CSS_SELECTOR, ".test-devtools-error-count"), 30, "an error")
        row = wait_for(
            lambda: chrome.find_elements(By.XPATH, "//*[contains(text(), 'Callback error updating out.children')]"),
            10,
            "the Errors panel",
        )
        row[0].click()
        frame = wait_for(lambda: chrome.find_elements(By.TAG_NAME, "iframe"), 10, "the error's details")
        chrome.switch_to.frame(frame[0])
        text = wait_for(lambda: chrome.find_element(By.TAG_NAME, "body").text, 10, "the error's message")
        assert "serve the app (app.run()) before the current process has finished its bootstrapping" in text, text
        assert "under 'if __name__ == \"__main__\":'" in text, text
        chrome.switch_to.default_content()
        assert chrome.find_element(By.ID, "out").text == "not clicked"
