"""Every Python snippet of README.md and docs/*.md runs as it appears on the page.

How a block is run depends on what the page says about it:

* A block whose first line is a file-name comment, ``# app.py``, is that file: it is written
  under that name in the page's scratch directory (later blocks of the page may import it) and
  run with ``python app.py`` there, in a subprocess with a deadline; it must exit 0. A file that
  serves (``.run(`` under ``if __name__ == "__main__":``, a Dash app) is started with ``PORT`` set
  to a free port and must answer HTTP; then it is stopped.
* The page's other blocks run in order in one namespace, as a reader types them into one
  session: one subprocess per page, in the same scratch directory, with a deadline.
* A block marked ``<!-- test: NAME -->`` is run by the test that :data:`NAMED` gives (it drives
  the program: HTTP, Chromium).
* A block marked ``<!-- compile-only: REASON -->`` is only compiled: it needs what the suite does
  not run here (a Celery worker and Redis, your own package). The set is small, and listed in
  :data:`COMPILE_ONLY` (page: how many), so adding one is a visible decision.
* A block marked ``<!-- excerpt: examples/NAME.py -->`` is compiled, and is part of that example
  file (the strings it names, component ids and properties, are the file's), which a
  ``tests/test_dash_*.py`` runs in Chromium (``test_dash_examples.py``, ``test_dash_async.py``).

An unmarked block that fails fails the test, with the page and line of the block.
"""

from __future__ import annotations

import ast
import json
import os
import re
import subprocess
import sys
import typing as t
import urllib.request
from pathlib import Path

import pytest

from .browser import free_port, live_server_process

ROOT = Path(__file__).resolve().parent.parent
PAGES = ["README.md", *sorted(f"docs/{p.name}" for p in (ROOT / "docs").glob("*.md"))]
# The programs import this checkout's packages (see tests/test_docs.py).
SOURCE_ENV = {"PYTHONPATH": str(ROOT)}
DEADLINE = 60.0

#: The blocks run by a test of their own: ``<!-- test: NAME -->`` -> the test.
NAMED = {
    "flask-app": "tests/test_docs.py::test_quickstart_flask_app",
    "flask-script": "tests/test_docs.py::test_quickstart_flask_app",
    "dash-app": "tests/test_docs.py::test_quickstart_dash_app",
    "sqlite-backend": "tests/test_docs_backend.py",
    "readme-quickstart": "tests/test_demo.py::test_readme_quick_start_runs",
}
#: The pages with blocks that are only compiled, and how many each has.
COMPILE_ONLY = {"docs/async.md": 1, "docs/backends.md": 1, "docs/migrating-from-dash.md": 7}

_BLOCK = re.compile(
    r"^(?:<!-- *(?P<kind>test|compile-only|excerpt)(?:: *(?P<note>[^>]*?))? *-->\n)?```python\n(?P<code>.*?)^```",
    re.MULTILINE | re.DOTALL,
)
_FILE = re.compile(r"# (?P<name>[\w/]+\.py)\n")
_SERVES = re.compile(r'^if __name__ == "__main__":.*\n(?:    .*\n)*?    \w+\.run\(', re.MULTILINE)


class Block(t.NamedTuple):
    page: str
    line: int
    kind: str | None
    note: str | None
    code: str

    @property
    def file(self) -> str | None:
        match = _FILE.match(self.code)
        return match["name"] if match else None

    @property
    def where(self) -> str:
        return f"{self.page} line {self.line}"


def blocks(page: str, text: str | None = None) -> list[Block]:
    """The Python blocks of ``page`` (its ``text``, by default read from the file)."""
    text = (ROOT / page).read_text() if text is None else text
    return [
        Block(page, text.count("\n", 0, m.start("code")) + 1, m["kind"], m["note"], m["code"])
        for m in _BLOCK.finditer(text)
    ]


def test_the_markers_are_known_and_few() -> None:
    found: dict[str, int] = {}
    for page in PAGES:
        for block in blocks(page):
            compile(block.code, block.where, "exec")  # every block is Python, whatever its marker
            if block.kind == "test":
                assert block.note in NAMED, f"{block.where}: '<!-- test: NAME -->' with NAME one of {sorted(NAMED)}"
            elif block.kind == "compile-only":
                assert block.note, f"{block.where}: say why it is only compiled: '<!-- compile-only: REASON -->'"
                found[page] = found.get(page, 0) + 1
            elif block.kind == "excerpt":
                example = ROOT / str(block.note)
                assert example.is_file(), f"{block.where}: no such example {block.note}"
                tests = (ROOT / "tests").glob("test_dash_*.py")
                runs = [test for test in tests if f'"{example.stem}"' in test.read_text()]
                assert runs, f"{block.where}: no tests/test_dash_*.py runs {block.note}"
                # Of that example: the ids and properties it names are the example's.
                source = example.read_text()
                calls = [n for n in ast.walk(ast.parse(block.code)) if isinstance(n, ast.Call)]
                strings = {
                    a.value for c in calls for a in c.args if isinstance(a, ast.Constant) and isinstance(a.value, str)
                }
                missing = sorted(s for s in strings if f'"{s}"' not in source)
                assert strings and not missing, f"{block.where}: {missing} are not in {block.note}"
    assert found == COMPILE_ONLY
    assert sum(len(blocks(page)) for page in PAGES) > 30, "are the blocks found?"


#: The session runner: runs each block (``[where, code]``) in one namespace, in order.
_SESSION = """
import json, sys
namespace = {"__name__": "__main__"}
for where, code in json.load(open(sys.argv[1])):
    exec(compile(code, where, "exec"), namespace)
"""


def _run(cmd: list[str], cwd: Path, what: str, deadline: float) -> None:
    try:
        out = subprocess.run(
            cmd,
            cwd=cwd,
            env={**os.environ, **SOURCE_ENV},
            capture_output=True,
            text=True,
            timeout=deadline,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"{what} did not end within {deadline:g} s:\n{exc.stdout!r}\n{exc.stderr!r}")
    assert out.returncode == 0, f"{what} failed ({out.returncode}):\n{out.stdout}\n{out.stderr}"


@pytest.mark.parametrize("page", [p for p in PAGES if any(b.kind is None for b in blocks(p))])
def test_the_pages_snippets_run_as_shown(page: str, tmp_path: Path) -> None:
    run_blocks(page, blocks(page), tmp_path)


def run_blocks(page: str, page_blocks: list[Block], tmp_path: Path, deadline: float = DEADLINE) -> None:
    """Run a page's blocks as the module's docstring says; fail naming the block that fails."""
    session: list[tuple[str, str]] = []
    for block in page_blocks:
        name = block.file
        if name is not None:
            (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
            (tmp_path / name).write_text(block.code)
        if block.kind is not None:
            continue
        if name is None:
            session.append((block.where, block.code))
        elif _SERVES.search(block.code):
            port = free_port()
            cmd = [sys.executable, name]
            with live_server_process(cmd, port, cwd=tmp_path, env={"PORT": str(port), **SOURCE_ENV}) as base:
                urllib.request.urlopen(base, timeout=10).close()  # (it serves its page)
        else:
            _run([sys.executable, name], tmp_path, f"{block.where} (python {name})", deadline)
    if session:
        (tmp_path / "_session.json").write_text(json.dumps(session))
        (tmp_path / "_session.py").write_text(_SESSION)
        what = f"the blocks of {page} without a file name"
        _run([sys.executable, "_session.py", "_session.json"], tmp_path, what, deadline)


_PAGE = """Some text.

```python
# helper.py
VALUE = 41
```

<!-- compile-only: needs a server -->
```python
import no_such_module
```

```python
from helper import VALUE

answer = VALUE + 1
```

```python
assert answer == 42, "the blocks share one session"
{more}
```
"""


@pytest.mark.parametrize(
    ("more", "said"),
    [
        ("raise SystemExit(3)", "failed (3)"),
        ("print(undefined)", "NameError: name 'undefined' is not defined"),
        ("import time; time.sleep(30)", "did not end within 3 s"),
    ],
)
def test_an_unmarked_snippet_that_does_not_run_fails_naming_its_line(tmp_path: Path, more: str, said: str) -> None:
    page = blocks("fake.md", _PAGE.format(more="pass"))
    run_blocks("fake.md", page, tmp_path)  # (the marked block is not run)
    page = blocks("fake.md", _PAGE.format(more=more))
    with pytest.raises((AssertionError, pytest.fail.Exception)) as raised:
        run_blocks("fake.md", page, tmp_path, deadline=3)
    assert said in str(raised.value)
    if "NameError" in said:
        assert 'File "fake.md line 20"' in str(raised.value)


def test_the_quickstart_dash_app_with_the_flask_cli(tmp_path: Path) -> None:
    """``flask --app dash_app longtask jobs``, as docs/quickstart.md says: it works with the
    page's ``server = app.server``, and without it says ``No such command 'longtask'``."""
    pytest.importorskip("dash", reason='pip install -e ".[dash]"')
    (block,) = [b for b in blocks("docs/quickstart.md") if b.note == "dash-app"]
    line = "server = app.server"
    assert line in block.code
    env = {**os.environ, **SOURCE_ENV}  # (the jobs: in tmp_path/instance, next to the module)

    def flask(app: str) -> subprocess.CompletedProcess[str]:
        cmd = [sys.executable, "-m", "flask", "--app", app, "longtask", "jobs"]
        return subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=DEADLINE, check=False)

    (tmp_path / "dash_app.py").write_text(block.code)
    for app in ("dash_app:server", "dash_app"):
        out = flask(app)
        assert (out.returncode, out.stdout) == (0, "No jobs.\n"), out.stderr
    (tmp_path / "dash_app.py").write_text(block.code.replace(line, ""))
    out = flask("dash_app")
    assert out.returncode != 0 and "No such command 'longtask'" in out.stderr


def test_where_job_state_lives_is_what_the_quick_start_says(tmp_path: Path) -> None:
    """docs/quickstart.md, "Where job state lives": ``python script.py`` keeps it in
    ``instance/longtask`` of the current directory; an imported module, next to the module."""
    text = (ROOT / "docs" / "quickstart.md").read_text()
    assert "`instance/longtask/` in the **current directory**, whatever the script's own directory" in text
    code = (
        "from flask import Flask\n"
        "from flask_longtask import LongTask\n"
        "app = Flask(__name__)\n"
        "LongTask(app)\n"
        "print(app.extensions['longtask'].backend.directory)\n"
    )
    (tmp_path / "scripts").mkdir()
    (tmp_path / "scripts" / "script.py").write_text(code)
    env = {**os.environ, **SOURCE_ENV}
    for cmd, expected in [
        ([sys.executable, "scripts/script.py"], tmp_path / "instance" / "longtask"),
        (
            [sys.executable, "-c", "import sys; sys.path.insert(0, 'scripts'); import script"],
            tmp_path / "scripts" / "instance" / "longtask",
        ),
    ]:
        out = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=DEADLINE, check=False)
        assert out.returncode == 0, out.stderr
        assert out.stdout.strip() == str(expected)
