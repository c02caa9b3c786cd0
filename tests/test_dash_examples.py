"""The six dash-labs examples (``examples/dash_*.py``) in a real headless Chromium.

Each example runs as its README says, ``python examples/dash_xxx.py --port N``, in its own
process with its own port and directory, on the thread backend and on the diskcache backend
(a pool of worker processes). ``EXAMPLE_TIME_SCALE`` shortens the simulated work.
"""

from __future__ import annotations

import contextlib
import sys
import time
import typing as t
from pathlib import Path

import pytest
import redis

from .browser import chrome, free_port, job_polls, live_server_process
from .services import start_redis, stop, wait_until

if t.TYPE_CHECKING:  # pragma: no cover
    from selenium.webdriver.chrome.webdriver import WebDriver

__all__ = ["chrome"]  # a fixture: importing it here is how pytest finds it

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"

# One browser at a time on this worker; other test files run beside it on other workers.
pytestmark = [
    pytest.mark.xdist_group("dash-browser"),
    pytest.mark.parametrize("backend", ["thread", "diskcache", "celery"]),
]


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> t.Iterator[str]:
    proc, url = start_redis(tmp_path_factory.mktemp("redis"))
    yield url
    stop(proc)


@contextlib.contextmanager
def example(
    name: str, backend: str, tmp_path: Path, chrome: WebDriver, scale: float, request: pytest.FixtureRequest
) -> t.Iterator[WebDriver]:
    """Serve ``examples/<name>.py`` and open it in ``chrome``.

    On Celery, a real worker runs beside it, started the documented way:
    ``flask --app examples/<name>.py:server longtask worker``.
    """
    port = free_port()
    env = {
        "EXAMPLE_TIME_SCALE": str(scale),
        "FLASK_LONGTASK_BACKEND": backend,
        "FLASK_LONGTASK_DISKCACHE_DIR": str(tmp_path / "longtask"),
        "FLASK_LONGTASK_WORKERS": "2",
        "PYTHONPATH": str(ROOT),
    }
    with contextlib.ExitStack() as stack:
        if backend == "celery":
            url = request.getfixturevalue("redis_url")
            redis.Redis.from_url(url).flushall()  # nothing left from the previous example
            env["FLASK_LONGTASK_CELERY_BROKER_URL"] = url
            worker = [sys.executable, "-m", "flask", "--app", f"{EXAMPLES / name}.py:server", "longtask", "worker"]
            stack.enter_context(celery_worker_process(worker, env, tmp_path))
        cmd = [sys.executable, str(EXAMPLES / f"{name}.py"), "--port", str(port)]
        page = stack.enter_context(live_server_process(cmd, port, env=env, cwd=tmp_path))
        chrome.get(page)
        yield chrome


@contextlib.contextmanager
def celery_worker_process(cmd: list[str], env: dict[str, str], tmp_path: Path) -> t.Iterator[None]:
    import os
    import subprocess

    log = tmp_path / "worker.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            cmd, env={**os.environ, **env}, cwd=tmp_path, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        wait_until(lambda: b"ready." in log.read_bytes() or proc.poll() is not None, 60, "the Celery worker")
        assert proc.poll() is None, log.read_text()
        yield
    finally:
        stop(proc)


def until(
    driver: WebDriver,
    condition: t.Callable[[WebDriver], t.Any],
    what: str,
    timeout: float = 20,
) -> t.Any:
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout, poll_frequency=0.02).until(condition, f"timed out waiting for {what}")


def text(driver: WebDriver, element_id: str) -> str:
    from selenium.webdriver.common.by import By

    return driver.find_element(By.ID, element_id).get_attribute("textContent") or ""


def enabled(driver: WebDriver, element_id: str) -> bool:
    from selenium.webdriver.common.by import By

    return driver.find_element(By.ID, element_id).is_enabled()


def visible(driver: WebDriver, element_id: str) -> bool:
    from selenium.webdriver.common.by import By

    return driver.find_element(By.ID, element_id).value_of_css_property("visibility") == "visible"


def click(driver: WebDriver, element_id: str) -> None:
    from selenium.webdriver.common.by import By

    until(driver, lambda d: enabled(d, element_id), f"#{element_id} to be enabled")
    driver.find_element(By.ID, element_id).click()


def initial_run_done(driver: WebDriver) -> None:
    # Like in dash-labs, each callback also runs once when the page loads (n_clicks is None).
    until(
        driver,
        lambda d: text(d, "paragraph_id") == "Clicked None times",
        "the initial run",
    )


def test_example_1_simple(chrome: WebDriver, tmp_path: Path, backend: str, request: pytest.FixtureRequest) -> None:
    with example("dash_simple", backend, tmp_path, chrome, scale=0.25, request=request) as page:
        initial_run_done(page)
        click(page, "button_id")
        until(page, lambda d: text(d, "paragraph_id") == "Clicked 1 times", "the result")


def test_example_2_button_disabled_while_running(
    chrome: WebDriver, tmp_path: Path, backend: str, request: pytest.FixtureRequest
) -> None:
    with example("dash_disable_button", backend, tmp_path, chrome, scale=0.25, request=request) as page:
        initial_run_done(page)
        click(page, "button_id")
        until(page, lambda d: not enabled(d, "button_id"), "the button to be disabled")
        until(page, lambda d: text(d, "paragraph_id") == "Clicked 1 times", "the result")
        until(page, lambda d: enabled(d, "button_id"), "the button to be enabled again")


def test_example_3_cancel(chrome: WebDriver, tmp_path: Path, backend: str, request: pytest.FixtureRequest) -> None:
    # A 5 s job: however loaded the machine, Cancel lands while it runs (a finished job has
    # nothing to cancel, and its answer would rightly show).
    with example("dash_cancel", backend, tmp_path, chrome, scale=2.5, request=request) as page:
        initial_run_done(page)
        assert not enabled(page, "cancel_button_id")
        before = job_polls(page)
        click(page, "button_id")
        until(page, lambda d: enabled(d, "cancel_button_id"), "Cancel to be enabled")
        # Dash enables Cancel when the request leaves, but the page learns its job's handle only
        # from the answer: a Cancel clicked before that cancels nothing (in Dash's own managers
        # too). So click once the page has polled for its job.
        until(page, lambda d: job_polls(d) > before, "the page to poll for its job")
        click(page, "cancel_button_id")
        until(
            page,
            lambda d: enabled(d, "button_id") and not enabled(d, "cancel_button_id"),
            "the running outputs to reset",
        )
        assert text(page, "paragraph_id") == "Clicked None times"  # the cancelled run never answered


def progress_value(driver: WebDriver) -> tuple[str | None, str | None]:
    from selenium.webdriver.common.by import By

    bar = driver.find_element(By.ID, "progress_bar")
    return bar.get_attribute("value"), bar.get_attribute("max")


def test_example_4_progress_bar(
    chrome: WebDriver, tmp_path: Path, backend: str, request: pytest.FixtureRequest
) -> None:
    # 10 steps of 0.5 s * 0.6 = 3 s; the page polls every second.
    with example("dash_progress_bar", backend, tmp_path, chrome, scale=0.6, request=request) as page:
        initial_run_done(page)
        click(page, "button_id")
        until(
            page,
            lambda d: visible(d, "progress_bar") and not visible(d, "paragraph_id"),
            "the bar to show",
        )
        value = until(
            page,
            lambda d: (v := progress_value(d))[0] not in (None, "", "0", "10") and v,
            "progress",
        )
        assert value[1] == "10"
        until(
            page,
            lambda d: int(progress_value(d)[0] or 0) > int(value[0]),
            "the bar to advance",
        )
        until(page, lambda d: text(d, "paragraph_id") == "Clicked 1 times", "the result")
        until(
            page,
            lambda d: visible(d, "paragraph_id") and not visible(d, "progress_bar"),
            "the result to show",
        )
        assert progress_value(page) == (
            "10",
            "10",
        )  # the last progress value is not lost
        assert enabled(page, "button_id") and not enabled(page, "cancel_button_id")


def graph_bar(driver: WebDriver) -> float | None:
    return t.cast(
        "float | None",
        driver.execute_script(
            "const g = document.querySelector('#progress_bar_graph .js-plotly-plot');"
            "return g && g.data && g.data[0] ? g.data[0].x[0] : null;"
        ),
    )


def test_example_5_progress_graph(
    chrome: WebDriver, tmp_path: Path, backend: str, request: pytest.FixtureRequest
) -> None:
    with example("dash_progress_graph", backend, tmp_path, chrome, scale=0.6, request=request) as page:
        initial_run_done(page)
        until(page, lambda d: graph_bar(d) == 0, "the empty bar (progress_default)")
        click(page, "button_id")
        first = until(page, lambda d: (x := graph_bar(d)) and x, "the bar to grow")
        until(page, lambda d: (graph_bar(d) or 0) > first, "the bar to grow further")
        until(page, lambda d: text(d, "paragraph_id") == "Clicked 1 times", "the result")
        until(page, lambda d: graph_bar(d) == 0, "the bar to go back to progress_default")


def test_example_6_caching(chrome: WebDriver, tmp_path: Path, backend: str, request: pytest.FixtureRequest) -> None:
    with example("dash_caching", backend, tmp_path, chrome, scale=0.75, request=request) as page:  # 1.5 s a run
        initial_run_done(page)
        durations = {}
        for clicks in (
            1,
            2,
            3,
            4,
            1,
        ):  # n_clicks cycles: the callback returns n_clicks % 4
            started = time.monotonic()
            click(page, "button_id")
            until(
                page,
                lambda d, n=clicks: text(d, "paragraph_id") == f"Clicked {n} times",
                f"click {clicks}",
            )
            until(page, lambda d: enabled(d, "button_id"), "the button to be enabled")
            durations.setdefault(clicks, []).append(time.monotonic() - started)
        first_run, cached = durations[1]
        runs = [first_run, *durations[2], *durations[3], *durations[4]]
        assert min(runs) >= 1.5
        # No run: the answer is there at the first poll (after 1 s) instead of the second.
        assert cached < min(runs) - 0.5
