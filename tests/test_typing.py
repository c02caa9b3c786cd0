"""Typing: a decorated task keeps its signature for submit() and its return type for result()."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def test_wrong_arguments_and_results_are_caught_by_mypy():
    pytest.importorskip("mypy")
    sample = ROOT / "tests" / "typing_sample.py"
    done = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--no-incremental", "--config-file", "setup.cfg", str(sample)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    flagged = {int(m.group(1)) for m in re.finditer(r"typing_sample\.py:(\d+): error", done.stdout)}
    expected = {n for n, line in enumerate(sample.read_text().splitlines(), 1) if "# error:" in line}
    assert len(expected) == 4  # (the last: a coroutine task's result is what its coroutine returns)
    assert flagged == expected, done.stdout
