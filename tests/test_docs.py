"""The docs in ``docs/`` are tested like code, so they fail when they drift from it.

* Every ``python`` block of ``docs/quickstart.md`` is run, as a new user would run it: the
  Flask app under ``flask --app app run``, driven over HTTP; the script beside it; the Dash app
  with ``python dash_app.py``, driven in headless Chromium. Each block says which test runs it
  with a ``<!-- test: NAME -->`` line above it. Every other block of every page runs as shown
  in ``tests/test_snippets.py``.
* The configuration page lists every key of ``DEFAULT_CONFIG`` with its default; the CLI page's
  ``--help`` transcripts are what the commands print; the performance page's tables are the
  ones recorded on their source pages.
* The site builds with ``sphinx-build -W`` (warnings are errors); the built quick-start page
  renders in headless Chromium; and a crawler follows every internal link and anchor of every
  built page.
"""

from __future__ import annotations

import ast
import functools
import html.parser
import http.server
import json
import os
import re
import subprocess
import sys
import threading
import typing as t
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

from .browser import chrome, free_port, job_polls, live_server_process
from .helpers import wait_for

if t.TYPE_CHECKING:  # pragma: no cover
    from selenium.webdriver.chrome.webdriver import WebDriver

__all__ = ["chrome"]  # a fixture: importing it here is how pytest finds it

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
# The programs import this checkout's packages, as an install of it would (an editable install
# made before a package was added does not map it).
SOURCE_ENV = {"PYTHONPATH": str(ROOT)}

# The module-scoped build is shared by the tests below: keep them on one xdist worker.
pytestmark = pytest.mark.xdist_group("docs")


# -- code blocks --------------------------------------------------------------------------------

_BLOCK = re.compile(
    r"^(?P<marker><!-- *(?P<kind>test|no-test)(?:: *(?P<name>[\w-]+))? *-->\n)?```python\n(?P<code>.*?)^```",
    re.MULTILINE | re.DOTALL,
)


class Block(t.NamedTuple):
    page: str
    line: int
    name: str | None  # None: unmarked; "" : marked "<!-- test -->" without a name
    code: str


def python_blocks(page: str) -> list[Block]:
    text = (DOCS / page).read_text()
    blocks = []
    for match in _BLOCK.finditer(text):
        if match["kind"] == "no-test":
            continue
        name = None if match["kind"] is None else (match["name"] or "")
        line = text.count("\n", 0, match.start("code"))
        blocks.append(Block(page, line, name, match["code"]))
    return blocks


def quickstart_block(name: str) -> str:
    (block,) = [b for b in python_blocks("quickstart.md") if b.name == name]
    return block.code


#: The quick-start blocks and the tests that run them.
QUICKSTART_TESTS = {
    "flask-app": "test_quickstart_flask_app",
    "flask-script": "test_quickstart_flask_app",
    "dash-app": "test_quickstart_dash_app",
}


def test_every_quickstart_block_is_run_by_a_test() -> None:
    blocks = python_blocks("quickstart.md")
    assert blocks, "docs/quickstart.md has no python blocks"
    for block in blocks:  # (the unmarked ones run in tests/test_snippets.py)
        assert block.name is None or block.name in QUICKSTART_TESTS, (
            f"docs/quickstart.md line {block.line}: '<!-- test: NAME -->' with NAME one of"
            f" {sorted(QUICKSTART_TESTS)} (or add a test for it)"
        )
    for name, test in QUICKSTART_TESTS.items():
        assert test in globals(), test
        assert len([b for b in blocks if b.name == name]) == 1, f"one block named {name!r}"


def _http(method: str, url: str) -> tuple[int, t.Any]:
    request = urllib.request.Request(url, method=method)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as err:
        return err.code, None


def test_quickstart_flask_app(tmp_path: Path) -> None:
    """The quick-start app, run as the page says (default backend), driven as its curl lines do."""
    (tmp_path / "app.py").write_text(quickstart_block("flask-app"))
    port = free_port()
    cmd = [sys.executable, "-m", "flask", "--app", "app", "run", "--port", str(port)]
    with live_server_process(cmd, port, cwd=tmp_path, env=SOURCE_ENV) as base:
        status, body = _http("POST", f"{base}/jobs?n=20&delay=0.05")
        assert status == 202, body
        job = f"{base}/jobs/{body['id']}"

        # Progress is visible while it runs, then the result.
        running = wait_for(
            lambda: (s := _http("GET", job)[1])["status"] == "running" and s["progress"] and s,
            timeout=30,
            what="progress while running",
        )
        assert set(running) == {"status", "progress"}
        assert 1 <= running["progress"]["done"] <= 20 and running["progress"]["total"] == 20
        final = wait_for(
            lambda: (s := _http("GET", job)[1])["status"] == "succeeded" and s,
            timeout=30,
            what="the result",
        )
        assert final == {
            "status": "succeeded",
            "progress": {"done": 20, "total": 20},
            "result": 20,
        }

        # Cancel a long one.
        status, body = _http("POST", f"{base}/jobs?n=100&delay=0.2")
        job = f"{base}/jobs/{body['id']}"
        wait_for(
            lambda: _http("GET", job)[1]["status"] == "running",
            timeout=30,
            what="the job to start",
        )
        status, body = _http("POST", f"{job}/cancel")
        assert status == 200 and body["status"] in ("running", "cancelled")
        final = wait_for(
            lambda: (s := _http("GET", job)[1])["status"] == "cancelled" and s,
            timeout=30,
            what="cancel",
        )
        assert final["progress"]["done"] < 100

        assert _http("GET", f"{base}/jobs/no-such-job")[0] == 404

    # The script beside app.py, as the page shows it, with the output its comments promise.
    (tmp_path / "script.py").write_text(quickstart_block("flask-script"))
    out = subprocess.run(
        [sys.executable, "script.py"],
        cwd=tmp_path,
        env={**os.environ, **SOURCE_ENV},
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    status, result, progress = out.stdout.splitlines()
    assert status in ("queued", "running")
    assert result == "3"
    assert progress == "{'done': 3, 'total': 3}"


def test_quickstart_dash_app(tmp_path: Path, chrome: WebDriver) -> None:
    """The quick-start Dash app, run with ``python dash_app.py``, clicked in Chromium."""
    pytest.importorskip("dash", reason='pip install -e ".[dash]"')
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    (tmp_path / "dash_app.py").write_text(quickstart_block("dash-app"))
    port = free_port()
    cmd = [sys.executable, "dash_app.py"]
    env = {"PORT": str(port), **SOURCE_ENV}
    with live_server_process(cmd, port, cwd=tmp_path, env=env) as base:
        chrome.get(base)

        def until(condition: t.Callable[[], t.Any], what: str) -> t.Any:
            return WebDriverWait(chrome, 30, poll_frequency=0.02).until(lambda _: condition(), f"timed out: {what}")

        def element(element_id: str) -> t.Any:
            return chrome.find_element(By.ID, element_id)

        until(lambda: element("run").is_enabled(), "the Run button")
        assert element("result").text == "Not run yet"
        assert not element("cancel").is_enabled(), "Cancel is enabled before any run"
        element("run").click()
        until(
            lambda: not element("run").is_enabled(),
            "Run to be disabled while the job runs",
        )
        until(
            lambda: 0 < int(element("progress").get_attribute("value") or 0) < 20,
            "the progress bar to move",
        )
        until(lambda: element("result").text == "Finished run 1", "the result")
        assert element("progress").get_attribute("value") == "20"
        assert element("run").is_enabled() and not element("cancel").is_enabled()

        before = job_polls(chrome)
        element("run").click()
        until(
            lambda: element("cancel").is_enabled(),
            "Cancel to be enabled while the job runs",
        )
        until(lambda: job_polls(chrome) > before, "the page to poll for its job (see job_polls)")
        element("cancel").click()
        until(lambda: element("run").is_enabled(), "Run to be enabled again after Cancel")
        assert element("result").text == "Finished run 1"


# -- pages that must match the code -------------------------------------------------------------


def test_configuration_page_lists_every_key_with_its_default() -> None:
    from flask_longtask.extension import DEFAULT_CONFIG

    documented = {}
    for row in (DOCS / "configuration.md").read_text().splitlines():
        if row.startswith("| `LONGTASK_"):
            key_cell, default_cell = row.strip("|").split("|")[:2]
            key = key_cell.strip().strip("`")
            assert key not in documented, f"{key} is documented twice"
            documented[key] = ast.literal_eval(default_cell.split("`")[1])
    assert documented == DEFAULT_CONFIG


def test_celery_pages_redis_line_serves_other_hosts(tmp_path: Path) -> None:
    """docs/celery.md's redis-server line, run as written (on a free port, in a scratch
    directory), serves a client that is not on the loopback interface (this machine's own
    address: protected mode refuses those without a password) through the URL form the page
    gives, refuses one without the password, and keeps an append-only file."""
    import secrets
    import shutil
    import socket

    import redis
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    from .services import stop

    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed (scripts/test installs it)")
    text = (DOCS / "celery.md").read_text()
    assert "`redis://:<password>@redis.internal:6379/0`" in text
    lines = {line.strip() for line in text.splitlines() if line.strip().startswith("redis-server ")}
    assert len(lines) == 1, f"docs/celery.md gives different redis-server lines: {sorted(lines)}"
    (line,) = lines
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.connect(("192.0.2.1", 9))  # (no packet is sent: this picks the outgoing address)
        address = probe.getsockname()[0]
    if address.startswith("127."):
        pytest.skip("this machine has no address but loopback")
    port, password = free_port(), secrets.token_hex(8)
    command = line.replace("--port 6379", f"--port {port}")
    assert command != line
    env = {**os.environ, "REDIS_PASSWORD": password}
    proc = subprocess.Popen(
        ["bash", "-c", f"exec {command}"],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    client = redis.Redis.from_url(f"redis://:{password}@{address}:{port}/0")
    stranger = redis.Redis(host=address, port=port, retry=Retry(NoBackoff(), 0))  # (refused at once)
    try:

        def answers() -> bool:
            try:
                return bool(client.ping())
            except redis.ConnectionError:  # (not started yet)
                return False

        wait_for(answers, 20, "redis-server to answer")
        assert client.config_get("appendonly") == {"appendonly": "yes"}
        with pytest.raises(redis.AuthenticationError):
            stranger.ping()
    finally:
        client.close()
        stranger.close()
        stop(proc)


def test_cli_page_help_is_what_the_commands_print() -> None:
    from flask import Flask

    from flask_longtask import LongTask
    from flask_longtask.backends import ThreadBackend

    app = Flask("app")
    LongTask(app, backend=ThreadBackend(workers=1))
    runner = app.test_cli_runner()
    text = (DOCS / "cli.md").read_text()
    transcripts = re.findall(
        r"^\$ flask --app app (longtask(?: \w+)? --help)\n(.*?)^```",
        text,
        re.MULTILINE | re.DOTALL,
    )
    assert {args for args, _ in transcripts} == {
        "longtask --help",
        *(f"longtask {name} --help" for name in ("worker", "jobs", "cancel", "purge")),
    }
    for args, documented in transcripts:
        # The page's output was made with COLUMNS=100: click wraps help at min(columns, 80) - 2.
        result = runner.invoke(args=args.split(), prog_name="flask", terminal_width=78)
        assert result.exit_code == 0, result.output
        assert result.output == documented, f"docs/cli.md: the output of 'flask {args}' has changed"


def _tables(text: str) -> list[str]:
    return [m.group(0) for m in re.finditer(r"(?:^\|.*\n)+", text, re.MULTILINE)]


def test_performance_tables_are_the_recorded_ones() -> None:
    page = (DOCS / "performance.md").read_text()
    sources = {
        name: (ROOT / name).read_text()
        for name in (
            "docs/celery.md",
            "docs/migrating-from-dash.md",
            "benchmarks/README.md",
        )
    }
    tables = _tables(page)
    assert tables
    for table in tables:
        assert any(table in source for source in sources.values()), (
            f"docs/performance.md has a table that is not on {sorted(sources)} (numbers are copied"
            f" from recorded runs, never written here first):\n{table}"
        )


# -- the built site -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def built_docs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    for module in ("sphinx", "myst_parser", "pallets_sphinx_themes"):
        pytest.importorskip(module, reason='pip install -e ".[docs]"')
    out = tmp_path_factory.mktemp("docs") / "html"
    build = subprocess.run(
        [
            sys.executable,
            "-m",
            "sphinx",
            "-W",
            "--keep-going",
            "-q",
            "-b",
            "html",
            str(DOCS),
            str(out),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    if build.returncode != 0:
        pytest.fail(
            f"sphinx-build -W failed ({build.returncode}):\n{build.stderr}\n{build.stdout}",
            pytrace=False,
        )
    return out


def test_docs_build_without_warnings(built_docs: Path) -> None:
    pages = {p.name for p in built_docs.glob("*.html")}
    expected = {f"{p.stem}.html" for p in DOCS.glob("*.md")}
    assert expected <= pages, f"pages missing from the build: {sorted(expected - pages)}"


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: t.Any) -> None:
        pass


@pytest.fixture(scope="module")
def docs_url(built_docs: Path) -> t.Iterator[str]:
    """The built site, served over HTTP on a free loopback port."""
    handler = functools.partial(_QuietHandler, directory=str(built_docs))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def test_quickstart_page_renders_in_chromium(docs_url: str, chrome: WebDriver) -> None:
    from selenium.webdriver.common.by import By

    chrome.get(docs_url + "quickstart.html")
    assert chrome.title.startswith("Quick start"), chrome.title
    heading = chrome.find_element(By.TAG_NAME, "h1")
    assert heading.is_displayed() and heading.text.startswith("Quick start")
    code = chrome.find_element(By.CSS_SELECTOR, "div.highlight-python pre")
    assert code.is_displayed() and "from flask_longtask import" in code.text
    assert code.size["height"] > 100 and code.size["width"] > 300
    # The Pallets theme's stylesheet and Pygments' applied: its font, a shaded, highlighted block.
    assert "Times" not in heading.value_of_css_property("font-family"), "no theme stylesheet"
    box = chrome.find_element(By.CSS_SELECTOR, "div.highlight-python div.highlight")
    assert box.value_of_css_property("background-color") == "rgba(248, 248, 248, 1)"
    highlighted = chrome.find_elements(By.CSS_SELECTOR, "div.highlight-python pre span.kn")
    assert highlighted, "no syntax highlighting"
    # The HTML comments that mark tested blocks stay invisible.
    assert "test: flask-app" not in chrome.find_element(By.TAG_NAME, "body").text
    links = [a.get_attribute("href") for a in chrome.find_elements(By.CSS_SELECTOR, "a.reference.internal")]
    assert any(link.endswith("concepts.html") for link in links), links


class _Links(html.parser.HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.links: list[str] = []
        self.ids: set[str] = set()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = dict(attrs)
        if values.get("id"):
            self.ids.add(t.cast(str, values["id"]))
        if tag == "a" and values.get("name"):
            self.ids.add(t.cast(str, values["name"]))
        attr = {"a": "href", "link": "href", "script": "src", "img": "src"}.get(tag)
        if attr and values.get(attr):
            self.links.append(t.cast(str, values[attr]))


def test_no_broken_internal_links(docs_url: str, built_docs: Path) -> None:
    parsed: dict[str, _Links] = {}
    fetched: dict[str, int] = {}

    def fetch(url: str) -> _Links | None:
        if url not in fetched:
            try:
                with urllib.request.urlopen(url, timeout=10) as response:
                    fetched[url] = response.status
                    if response.headers.get_content_type() == "text/html":
                        page = _Links()
                        page.feed(response.read().decode())
                        parsed[url] = page
            except urllib.error.HTTPError as err:
                fetched[url] = err.code
        return parsed.get(url)

    host = urllib.parse.urlsplit(docs_url).netloc
    todo = [docs_url + p.relative_to(built_docs).as_posix() for p in sorted(built_docs.rglob("*.html"))]
    seen = set(todo)
    broken: list[str] = []
    checked = 0
    while todo:
        url = todo.pop()
        page = fetch(url)
        if page is None:
            continue
        for link in page.links:
            target = urllib.parse.urljoin(url, link)
            parts = urllib.parse.urlsplit(target)
            if parts.scheme not in ("http", "https") or parts.netloc != host:
                continue  # external (and never fetched: no internet here), mailto:, javascript:
            resource = urllib.parse.urlunsplit(parts._replace(fragment=""))
            checked += 1
            target_page = fetch(resource)
            if fetched[resource] != 200:
                broken.append(f"{url}: {link} -> HTTP {fetched[resource]}")
                continue
            fragment = urllib.parse.unquote(parts.fragment)
            if fragment and target_page is not None and fragment not in target_page.ids:
                broken.append(f"{url}: {link} -> no id {fragment!r} in {resource}")
            if target_page is not None and resource not in seen:
                seen.add(resource)
                todo.append(resource)
    assert not broken, "broken links in the built docs:\n" + "\n".join(broken)
    assert checked > 100, f"only {checked} links checked: is the crawler finding the pages?"
