"""Repository-wide pytest setup (tests/conftest.py has the test fixtures).

``--doctest-modules`` (setup.cfg) is meant for the library's docstrings. Under ``tests/`` it
would also import every helper module, such as the apps that server subprocesses load and that
expect their environment at import time, so doctest collection is limited to the packages.
"""

from __future__ import annotations

import typing as t
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent / "tests"


@pytest.hookimpl(hookwrapper=True)
def pytest_collect_file(file_path: Path, parent: pytest.Collector) -> t.Generator[None, t.Any, None]:
    outcome = yield
    if TESTS in file_path.parents:
        collected = outcome.get_result()
        # By class name: pytest does not export DoctestModule.
        outcome.force_result([node for node in collected if type(node).__name__ != "DoctestModule"])
