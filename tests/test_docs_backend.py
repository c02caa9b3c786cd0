"""The complete custom backend that ``docs/backends.md`` shows passes the conformance suite.

The code block is taken from the page, written to a module and imported: the page cannot drift
from a backend that works.
"""

from __future__ import annotations

import importlib.util
import re
import sys
import types
import typing as t
from pathlib import Path

import pytest
from flask import Flask

from flask_longtask import LongTask
from flask_longtask.backends import Backend
from flask_longtask.testing import BackendConformance

PAGE = Path(__file__).resolve().parent.parent / "docs" / "backends.md"
_BLOCK = re.compile(r"^<!-- test: sqlite-backend -->\n```python\n(?P<code>.*?)^```", re.MULTILINE | re.DOTALL)
MODULE = "docs_sqlite_backend"


def _code() -> str:
    (match,) = _BLOCK.finditer(PAGE.read_text())
    return match["code"]


@pytest.fixture(scope="module")
def docs_backend(tmp_path_factory: pytest.TempPathFactory) -> t.Iterator[types.ModuleType]:
    path = tmp_path_factory.mktemp("docs") / f"{MODULE}.py"
    path.write_text(_code())
    spec = importlib.util.spec_from_file_location(MODULE, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[MODULE] = module  # so that LONGTASK_BACKEND can name it
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        del sys.modules[MODULE]


def test_the_docs_backend_is_complete_in_at_most_150_lines() -> None:
    assert len(_code().splitlines()) <= 150


def test_the_docs_backend_is_built_from_config(docs_backend: types.ModuleType, tmp_path: Path) -> None:
    app = Flask("docs_app", instance_path=str(tmp_path / "instance"))
    app.config.update(LONGTASK_BACKEND=f"{MODULE}:SqliteBackend", LONGTASK_WORKERS=2)
    longtask = LongTask(app)

    @longtask.task
    def double(n: int) -> int:
        return n * 2

    backend = app.extensions["longtask"].backend
    try:
        assert type(backend).__name__ == "SqliteBackend" and backend.workers == 2
        with app.app_context():
            assert double.submit(21).result(timeout=10) == 42
        assert (tmp_path / "instance" / "longtask.sqlite3").exists()
    finally:
        backend.close()


class TestDocsBackend(BackendConformance):
    @pytest.fixture
    def backend(self, docs_backend: types.ModuleType, tmp_path: Path) -> t.Iterator[Backend]:
        backend = docs_backend.SqliteBackend(str(tmp_path / "jobs.sqlite3"))
        yield backend
        backend.close()
