"""The distribution: an sdist and a wheel build, and each extra installs what it promises."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import venv
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.xdist_group("packaging")


@pytest.fixture(scope="module")
def dist(tmp_path_factory: pytest.TempPathFactory) -> Path:
    pytest.importorskip("build")
    out = tmp_path_factory.mktemp("dist")
    # From a copy of the tracked files: setuptools writes build/ and *.egg-info into the source
    # tree, so two builds of one checkout at once (two test processes) would collide.
    source = tmp_path_factory.mktemp("source")
    tracked = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout
    for name in filter(None, tracked.decode().split("\0")):
        if (ROOT / name).is_file():
            (source / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, source / name)
    subprocess.run(
        # --no-isolation: build with the setuptools and wheel of this environment (the test
        # extra), instead of fetching them into a fresh one from the package index each time.
        [sys.executable, "-m", "build", "--no-isolation", "--sdist", "--wheel", "--outdir", str(out), str(source)],
        check=True,
        capture_output=True,
        timeout=600,
    )
    return out


def test_sdist_and_wheel_are_built_with_the_typing_marker(dist: Path) -> None:
    (wheel,) = dist.glob("*.whl")
    assert list(dist.glob("*.tar.gz"))
    names = zipfile.ZipFile(wheel).namelist()
    assert "flask_longtask/py.typed" in names and "dash_adapter/py.typed" in names
    assert "flask_longtask/backends/celery.py" in names
    # The dashboard's templates, style sheet and script are package data: it needs nothing else.
    for name in ("static/dashboard.js", "static/dashboard.css", "templates/longtask_dashboard/index.html"):
        assert f"flask_longtask/dashboard/{name}" in names, name
    assert not [n for n in names if n.startswith(("tests/", "examples/", "benchmarks/"))]


@pytest.mark.parametrize(
    "extra, imports",
    [
        ("dash", "import flask_longtask, dash_adapter; from flask_longtask.backends.diskcache import DiskcacheBackend"),
        ("celery", "import flask_longtask; from flask_longtask.backends.celery import CeleryBackend"),
    ],
)
def test_a_fresh_virtualenv_with_one_extra_imports_what_it_promises(
    dist: Path, tmp_path: Path, extra: str, imports: str
) -> None:
    (wheel,) = dist.glob("*.whl")
    env = tmp_path / "venv"
    venv.create(env, with_pip=True)
    python = str(env / "bin" / "python")
    # Nothing of this checkout may leak in: not its path, not its metadata.
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "COVERAGE", "VIRTUAL_ENV"))}

    def run(*args: str, **kw: object) -> subprocess.CompletedProcess[str]:
        return subprocess.run([python, *args], capture_output=True, text=True, cwd=tmp_path, env=clean, **kw)  # type: ignore[call-overload, no-any-return]

    installed = run("-m", "pip", "install", "-q", "--disable-pip-version-check", f"{wheel}[{extra}]", timeout=900)
    assert installed.returncode == 0, installed.stderr
    done = run("-c", imports, timeout=120)
    assert done.returncode == 0, done.stderr
    if extra == "celery":  # the dash extra is not installed: the adapter says so, clearly
        done = run("-c", "import dash_adapter", timeout=120)
        assert done.returncode != 0 and 'pip install "Flask-LongTask[dash]"' in done.stderr
