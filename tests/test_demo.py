"""The demo in examples/demo (the HTTP API it uses, and its page in a real headless Chromium) and
the README's quick start and configuration table.

``LONGTASK_UPDATE_SCREENSHOTS=1`` also saves the README's screenshots to docs/images/.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import subprocess
import sys
import typing as t
from pathlib import Path

import pytest

from .browser import chrome, free_port, live_server_process
from .helpers import wait_for

ROOT = Path(__file__).resolve().parent.parent
DEMO = ROOT / "examples" / "demo" / "app.py"
SCREENSHOTS = ROOT / "docs" / "images"
UPDATE_SCREENSHOTS = os.environ.get("LONGTASK_UPDATE_SCREENSHOTS") == "1"  # taken on "thread"

if t.TYPE_CHECKING:  # pragma: no cover
    from selenium.webdriver.chrome.webdriver import WebDriver

__all__ = ["chrome"]  # a fixture: importing it here is how pytest finds it


def demo_env(tmp_path: Path, step_seconds: float, backend: str | None = None) -> dict[str, str]:
    # Flask reads FLASK_* variables into app.config (app.config.from_prefixed_env()).
    env = {
        "FLASK_DEMO_STEP_SECONDS": str(step_seconds),
        # Keeps diskcache's state out of the source tree.
        "FLASK_LONGTASK_DISKCACHE_DIR": str(tmp_path / "longtask"),
    }
    if backend is not None:
        env["FLASK_LONGTASK_BACKEND"] = backend
    return env


# The page is tested on both local backends (the demo itself names none: it runs on the default).
BACKENDS = ["thread", "diskcache"]


# -- the JSON routes, through Flask's test client ------------------------------------------------


@pytest.fixture
def demo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> t.Iterator[t.Any]:
    """The demo module, imported afresh from its file, its jobs on threads in this process.

    (Worker processes could not import it under this made-up module name; the browser tests
    below run the demo as a real server on the default backend.)
    """
    for key, value in demo_env(tmp_path, 0.001).items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("FLASK_LONGTASK_BACKEND", "thread")
    name = f"longtask_demo_{tmp_path.name}"
    spec = importlib.util.spec_from_file_location(name, DEMO)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # tasks are found by module name
    spec.loader.exec_module(module)
    module.app.config["TESTING"] = True
    yield module
    with module.app.app_context():
        module.longtask.backend.close()
    del sys.modules[name]


TASK_URL = "/api/tasks/demo.sum_of_squares"


def test_demo_job_runs_to_its_result(demo: t.Any) -> None:
    client = demo.app.test_client()
    page = client.get("/").data
    assert b'<progress id="progress"' in page and b'data-task="demo.sum_of_squares"' in page

    response = client.post(TASK_URL, json={"args": [4]})
    assert response.status_code == 202
    url = response.headers["Location"]
    state = wait_for(
        lambda: (s := client.get(url).json)["status"] == "succeeded" and s,
        what="the demo job to succeed",
    )
    assert (state["progress"], state["result"]) == ([4, 4], 30)


def test_demo_job_cancel(demo: t.Any) -> None:
    demo.app.config["DEMO_STEP_SECONDS"] = 0.02
    client = demo.app.test_client()
    url = client.post(TASK_URL, json={"args": [1000]}).headers["Location"]
    wait_for(lambda: client.get(url).json["progress"], what="the first progress")

    response = client.delete(url)
    assert response.status_code == 200
    state = wait_for(
        lambda: (s := client.get(url).json)["status"] == "cancelled" and s,
        what="the demo job to be cancelled",
    )
    assert "result" not in state
    assert state["progress"][0] < 1000


@pytest.mark.parametrize("steps", ["10", 2.5, True, None])
def test_demo_refuses_steps_of_the_wrong_type(demo: t.Any, steps: t.Any) -> None:
    response = demo.app.test_client().post(TASK_URL, json={"args": [steps]})
    assert response.status_code == 400
    assert "argument 'steps' must be int" in response.json["error"]["message"]


@pytest.mark.parametrize("steps", [0, 1001])
def test_demo_job_fails_on_steps_out_of_range(demo: t.Any, steps: int) -> None:
    client = demo.app.test_client()
    url = client.post(TASK_URL, json={"args": [steps]}).headers["Location"]
    state = wait_for(lambda: (s := client.get(url).json)["status"] == "failed" and s, what="the job to fail")
    assert state["error"] == {"type": "ValueError", "message": "steps must be from 1 to 1000"}


def test_demo_unknown_or_foreign_job_is_404(demo: t.Any) -> None:
    client = demo.app.test_client()
    assert client.get("/api/jobs/no-such-job").status_code == 404
    assert client.delete("/api/jobs/" + "0" * 32).status_code == 404
    url = client.post(TASK_URL, json={"args": [1]}).headers["Location"]
    assert demo.app.test_client().get(url).status_code == 404  # another browser's session


# -- the page, served by a real server process, in headless Chromium -----------------------------


def progress_value(driver: WebDriver) -> float:
    from selenium.webdriver.common.by import By

    return float(driver.find_element(By.ID, "progress").get_attribute("value") or 0)


def status_of(driver: WebDriver) -> str:
    from selenium.webdriver.common.by import By

    return driver.find_element(By.ID, "status").get_attribute("data-status") or ""


def start_job(driver: WebDriver, steps: int) -> None:
    from selenium.webdriver.common.by import By

    field = driver.find_element(By.ID, "steps")
    field.clear()
    field.send_keys(str(steps))
    driver.find_element(By.ID, "start").click()


@pytest.mark.parametrize("backend", BACKENDS)
def test_demo_page_shows_progress_and_result(chrome: WebDriver, tmp_path: Path, backend: str) -> None:
    """``flask --app examples/demo/app.py run``: Start, the bar advances, the result appears."""
    from selenium.webdriver.common.by import By

    port = free_port()
    cmd = [sys.executable, "-m", "flask", "--app", str(DEMO), "run", "--port", str(port)]
    with live_server_process(cmd, port, env=demo_env(tmp_path, 0.1, backend), cwd=ROOT) as url:
        if UPDATE_SCREENSHOTS and backend == "thread":
            chrome.set_window_size(1000, 530)
        chrome.get(url)
        assert chrome.title == "Flask-LongTask demo"
        start_job(chrome, 20)

        first = wait_for(lambda: progress_value(chrome), what="the progress bar to move")
        assert status_of(chrome) == "running"
        # The bar is fed by the job's Server-Sent Events, not by the polling fallback.
        assert chrome.find_element(By.TAG_NAME, "main").get_attribute("data-transport") == "sse"
        wait_for(lambda: progress_value(chrome) > first, what="the progress bar to advance")
        if UPDATE_SCREENSHOTS and backend == "thread":
            wait_for(lambda: progress_value(chrome) >= 8, what="the bar to be well under way")
            chrome.save_screenshot(str(SCREENSHOTS / "demo-running.png"))

        wait_for(lambda: status_of(chrome) == "succeeded", what="the job to succeed")
        assert progress_value(chrome) == 20
        assert chrome.find_element(By.ID, "status").text == "Succeeded (20/20)"
        # 1² + 2² + ... + 20²
        assert chrome.find_element(By.ID, "result").text == "Result: 2870"
        assert chrome.find_element(By.ID, "start").is_enabled()
        assert not chrome.find_element(By.ID, "cancel").is_enabled()


@pytest.mark.parametrize("backend", BACKENDS)
def test_demo_page_cancel(chrome: WebDriver, tmp_path: Path, backend: str) -> None:
    """``python examples/demo/app.py``: Start, then Cancel, and the job ends "cancelled"."""
    from selenium.webdriver.common.by import By

    port = free_port()
    cmd = [sys.executable, str(DEMO), "--port", str(port)]
    with live_server_process(cmd, port, env=demo_env(tmp_path, 0.1, backend), cwd=ROOT) as url:
        if UPDATE_SCREENSHOTS and backend == "thread":
            chrome.set_window_size(1000, 530)
        chrome.get(url)
        assert not chrome.find_element(By.ID, "cancel").is_enabled(), "Cancel before any job"
        start_job(chrome, 200)
        wait_for(lambda: progress_value(chrome) >= 3, what="the job to make progress")
        chrome.find_element(By.ID, "cancel").click()

        wait_for(lambda: status_of(chrome) == "cancelled", what="the job to be cancelled")
        assert chrome.find_element(By.ID, "status").text.startswith("Cancelled")
        assert progress_value(chrome) < 200
        assert not chrome.find_element(By.ID, "result").is_displayed()
        wait_for(lambda: chrome.find_element(By.ID, "start").is_enabled(), what="Start to be enabled again")
        if UPDATE_SCREENSHOTS and backend == "thread":
            chrome.save_screenshot(str(SCREENSHOTS / "demo-cancelled.png"))


def transport(driver: WebDriver) -> str:
    from selenium.webdriver.common.by import By

    return driver.find_element(By.TAG_NAME, "main").get_attribute("data-transport") or ""


@pytest.mark.parametrize("refused", ["at once", "on reconnect"])
def test_demo_page_polls_when_the_server_refuses_its_stream(chrome: WebDriver, tmp_path: Path, refused: str) -> None:
    """Past the server's limits on streams the page falls back to polling, and shows the job to its
    end: refused at once (no stream slot left in the process), or when the browser reconnects
    after the job's ``LONGTASK_SSE_WINDOW`` (it streamed until then)."""
    from selenium.webdriver.common.by import By

    if refused == "at once":
        settings = {"FLASK_LONGTASK_SSE_MAX_STREAMS": "0"}
    else:  # each stream lasts 0.5 s; after 1.5 s the job is no longer streamed
        settings = {"FLASK_LONGTASK_SSE_TIMEOUT": "0.5", "FLASK_LONGTASK_SSE_WINDOW": "1.5"}
    port = free_port()
    cmd = [sys.executable, "-m", "flask", "--app", str(DEMO), "run", "--port", str(port)]
    env = {**demo_env(tmp_path, 0.1, "thread"), **settings}
    with live_server_process(cmd, port, env=env, cwd=ROOT) as url:
        chrome.get(url)
        start_job(chrome, 40)
        if refused == "on reconnect":
            wait_for(lambda: transport(chrome) == "sse", what="the page to stream first")
        wait_for(lambda: status_of(chrome) == "succeeded", 30, what="the job to succeed")
        assert transport(chrome) == "poll"
        assert progress_value(chrome) == 40
        assert chrome.find_element(By.ID, "result").text == f"Result: {sum(i * i for i in range(41))}"


# -- the README: its quick start runs, its configuration table matches the code ------------------


def readme_section(title: str) -> str:
    text = (ROOT / "README.md").read_text()
    start = text.index(f"\n## {title}\n")
    end = text.find("\n## ", start + 1)
    return text[start : end if end != -1 else None]


@pytest.mark.parametrize("backend", ["default", "thread", "diskcache"])
def test_readme_quick_start_runs(tmp_path: Path, backend: str) -> None:
    section = readme_section("Quick start")
    code = section.split("```python\n", 1)[1].split("```", 1)[0]
    if backend != "default":
        line = "app = Flask(__name__)\n"
        assert line in code
        code = code.replace(line, f"{line}app.config['LONGTASK_BACKEND'] = {backend!r}\n")
    script = tmp_path / "quickstart.py"
    script.write_text(code)
    out = subprocess.run(
        [sys.executable, str(script)], check=False, cwd=tmp_path, capture_output=True, text=True, timeout=90
    )
    assert out.returncode == 0, out.stderr
    first, result, last = out.stdout.splitlines()
    assert first.split()[1] in ("queued", "running")
    assert result == str(sum(i * i for i in range(1_000_000)))
    assert last == "succeeded (1000000, 1000000)"


def test_readme_configuration_table_lists_every_key() -> None:
    from flask_longtask.extension import DEFAULT_CONFIG

    rows = [line for line in readme_section("Configuration").splitlines() if line.startswith("| `LONGTASK_")]
    documented = {}
    for row in rows:
        key, default = (cell.strip().split("`")[1] for cell in row.strip("|").split("|")[:2])
        documented[key] = default
    expected = {key: repr(value).replace("'", '"') for key, value in DEFAULT_CONFIG.items()}
    assert documented == expected, "README.md's Configuration table must list every key of DEFAULT_CONFIG"


def test_readme_dash_snippet_registers_a_background_callback(tmp_path: Path) -> None:
    """The README's Dash example, executed: one background callback on a LongTaskManager."""
    code = readme_section("Dash").split("```python\n", 1)[1].split("```", 1)[0]
    namespace: dict[str, t.Any] = {"__name__": "readme_dash"}
    exec(compile(code, "README.md", "exec"), namespace)
    app = namespace["app"]
    app.server.config["LONGTASK_DISKCACHE_DIR"] = str(tmp_path)
    background = app.callback_map["out.children"]["background"]
    assert type(app._background_manager).__name__ == "LongTaskManager"
    assert [str(o) for o in background["progress"]] == ["bar.value", "bar.max"]
    assert app.server.extensions["longtask"].longtask is namespace["longtask"]


def test_demo_page_shows_the_error_when_its_stream_fails(chrome: WebDriver, tmp_path: Path) -> None:
    """The job's progress rewritten in storage by someone without the key: its stream ends with a
    ``server-error`` event, and the page polls, and shows the API's error."""
    import sqlite3

    port = free_port()
    cmd = [sys.executable, str(DEMO), "--port", str(port)]
    with live_server_process(cmd, port, env=demo_env(tmp_path, 3.0, "diskcache"), cwd=ROOT) as url:
        chrome.get(url)
        start_job(chrome, 5)  # a step every 3 s: the tampered value is read before the next one
        wait_for(lambda: progress_value(chrome) >= 1, 20, what="the first progress value")
        assert transport(chrome) == "sse"
        with contextlib.closing(sqlite3.connect(tmp_path / "longtask" / "cache.db")) as con, con:
            unsigned = b"\x80\x04N."  # (pickled None, without the signature)
            assert con.execute("UPDATE longtask SET mode = 4, value = ? WHERE kind = 'progress:'", (unsigned,)).rowcount
        wait_for(lambda: status_of(chrome) == "error", 20, what="the page to show the error")
        assert chrome.find_element("id", "status").text == "Error: Internal server error."
        assert transport(chrome) == "poll"
