"""Scripts run as ``python script.py`` on the diskcache pool, as a newcomer writes them (issue 22).

Each test writes its scripts into its own ``tmp_path`` and runs them there, as subprocesses with a
real pool: job state lives in ``./instance/longtask``, as it does for a script.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from flask_longtask.backends.diskcache import DiskcacheBackend
from flask_longtask.backends.diskcache.scripts import holder
from flask_longtask.store import keys
from tests.helpers import wait_for
from tests.services import ROOT
from tests.test_diskcache_procs import BIN, env_for, stop

HEAD = """\
import os, sys, time
from flask import Flask
from flask_longtask import LongTask

app = Flask(__name__)
app.config["LONGTASK_WORKERS"] = app.config["LONGTASK_MAX_WORKERS"] = 2
"""


def run(tmp_path: Path, name: str, body: str, *args: str, timeout: float = 60) -> tuple[int, str, float]:
    """Run ``python <name>.py`` (``HEAD`` + ``body``) in ``tmp_path``: its exit code, output, seconds."""
    (tmp_path / f"{name}.py").write_text(HEAD + textwrap.dedent(body))
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    for var in ("LONGTASK_DISKCACHE_DIR", "WERKZEUG_RUN_MAIN"):
        env.pop(var, None)
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, f"{name}.py", *args],
        cwd=tmp_path,
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        timeout=timeout,
    )
    output = done.stdout.decode(errors="replace") + done.stderr.decode(errors="replace")
    return done.returncode, output, time.monotonic() - started


def records(tmp_path: Path) -> list[dict]:
    """Every job record left in the scripts' ``./instance/longtask``."""
    backend = DiskcacheBackend(tmp_path / "instance" / "longtask", embedded=False)
    try:
        return [backend.get(key) for key in backend.scan(keys.JOB_PREFIX)]
    finally:
        backend.close()


@pytest.mark.parametrize("define", ["def", "async def"])
def test_a_script_without_the_main_guard_fails_at_once_naming_it(tmp_path: Path, define: str) -> None:
    """Every worker imports the script again and runs its submit: it raises there, and the job
    the script waits for fails with that error instead of waiting for ever (a coroutine task's
    job too: it goes to a worker of coroutine jobs, which imports the script the same way)."""
    code, output, seconds = run(
        tmp_path,
        "noguard",
        f"""\
        longtask = LongTask(app)

        @longtask.task
        {define} add(a, b):
            return a + b

        with app.app_context():
            job = add.submit(1, 2)
            print("result", job.result())  # (no timeout: it used to wait for ever)
        """,
    )
    assert code != 0, output
    assert seconds < 30, output
    assert "JobFailedError: RuntimeError: An attempt has been made to submit a job before" in output, output
    assert "under 'if __name__ == \"__main__\":'" in output, output
    # Nothing left queued for the next script run from this folder: the workers queued nothing.
    left = records(tmp_path)
    assert [(r["task"], r["status"]) for r in left] == [("noguard.add", "failed")], left
    assert left[0]["error"]["type"] == "RuntimeError"


def test_workers_that_fail_as_they_start_fail_the_job_with_their_error_and_back_off(tmp_path: Path) -> None:
    """A script that breaks only in the workers (an exception at import there): the job fails
    with the workers' own error, and the pool starts fewer and fewer of them."""
    code, output, _ = run(
        tmp_path,
        "breaks",
        """\
        longtask = LongTask(app)

        @longtask.task
        def add(a, b):
            return a + b

        if __name__ != "__main__":  # a worker, importing the script again
            with open("starts.txt", "a") as f:
                f.write(f"{time.monotonic()}\\n")
            raise ValueError("this script cannot be imported by a worker")

        if __name__ == "__main__":
            with app.app_context():
                job = add.submit(1, 2)
                print("status", job.wait(timeout=30).value, job.error["type"], job.error["message"])
                began = time.monotonic()
                while time.monotonic() - began < 4:  # (the pool, left alone for 4 s)
                    time.sleep(0.1)
                with open("starts.txt") as f:
                    print("starts", len(f.read().split()))
                began = time.monotonic()
                again = add.submit(2, 3)  # a new job does not wait for the back-off: it fails now
                print("again", again.wait(timeout=30).value, round(time.monotonic() - began, 1))
        """,
    )
    assert code == 0, output
    assert "status failed ValueError this script cannot be imported by a worker" in output, output
    lines = dict(line.split(" ", 1) for line in output.splitlines() if line.startswith(("starts ", "again ")))
    status, seconds = lines["again"].split()
    assert status == "failed" and float(seconds) < 3, output
    starts = list(range(int(lines["starts"])))
    # Two workers at first, then two after 0.5 s, then two after 2 s more: the next wait is 8 s.
    # (Without the back-off: about 10 in the same time.)
    assert len(starts) <= 6, (starts, output)
    assert "failed as it started (importing the app): ValueError: this script cannot be imported" in output, output


def test_an_unrelated_script_in_the_same_folder_never_imports_another(tmp_path: Path) -> None:
    """A job left queued by one script (here: one that hosts no pool, as after a Ctrl+C) is not
    run by the pool of the next script, which would import the first: it fails, saying why."""
    code, output, _ = run(
        tmp_path,
        "first",
        """\
        with open("imported.txt", "a") as f:
            f.write(f"{os.getpid()} {__name__}\\n")
        app.config["LONGTASK_EMBEDDED_WORKER"] = False
        longtask = LongTask(app)

        @longtask.task
        def double(n):
            return 2 * n

        if __name__ == "__main__":
            with app.app_context():
                print(double.submit(21).id)
        """,
    )
    assert code == 0, output
    orphan = output.split()[0]
    code, output, _ = run(
        tmp_path,
        "second",
        """\
        longtask = LongTask(app)

        @longtask.task
        def add(a, b):
            return a + b

        if __name__ == "__main__":
            with app.app_context():
                print("own", add.submit(1, 2).result(timeout=30))
                other = longtask.get_job(sys.argv[1])
                print("other", other.wait(timeout=30).value)
                print(other.error["type"], other.error["message"])
        """,
        orphan,
    )
    assert code == 0, output
    assert "own 3" in output and "other failed" in output, output
    assert f"LookupError Task 'first.double' belongs to the script {tmp_path / 'first.py'}" in output, output
    assert "LONGTASK_DISKCACHE_DIR" in output, output
    imported = (tmp_path / "imported.txt").read_text().splitlines()
    assert [line.split()[1] for line in imported] == ["__main__"], imported  # the first run only


def test_a_function_of_main_as_an_argument(tmp_path: Path) -> None:
    """One the workers can find (at module level, outside the guard) runs; the others raise
    TypeError at submit, naming the function, and nothing is queued."""
    code, output, _ = run(
        tmp_path,
        "fnarg",
        """\
        longtask = LongTask(app)

        @longtask.task
        def call(f, x):
            f = f[0]["f"] if isinstance(f, list) else f
            return f(x)

        def top(x):
            return x + 1

        def make():
            def inner(x):
                return x * 10
            return inner

        def make_task():  # a task made by a helper that runs at import, as Dash callbacks are
            @longtask.task
            def helped(x):
                return x * 2
            return helped

        helped = make_task()

        if __name__ == "__main__":
            def guarded(x):
                return -x

            cases = {
                "top": top,
                "top-in-a-list": [{"f": top}],
                "a-task-of-a-helper": helped,  # (a task pickles by name, wherever it is defined)
                "inner": make(),
                "lambda": lambda x: x,
                "guarded": guarded,
                "guarded-in-a-list": [{"f": guarded}],
            }
            with app.app_context():
                for name, f in cases.items():
                    try:
                        job = call.submit(f, 3)
                    except TypeError as exc:
                        print(name, "TypeError", exc)
                    else:
                        print(name, job.result(timeout=30))
                print("helped", helped.submit(5).result(timeout=30))
                print("jobs", len(longtask.jobs()))
        """,
    )
    assert code == 0, output
    lines = dict(line.split(" ", 1) for line in output.splitlines() if " " in line)
    assert lines["top"] == "4" and lines["top-in-a-list"] == "4", output
    assert lines["a-task-of-a-helper"] == "6" and lines["helped"] == "10", output
    for name, function, why in [
        ("inner", "make.<locals>.inner()", "defined inside a function"),
        ("lambda", "<lambda>()", "a lambda"),
        ("guarded", "guarded()", "defined under 'if __name__ == \"__main__\":'"),
        ("guarded-in-a-list", "guarded()", "defined under"),
    ]:
        assert lines[name].startswith("TypeError Argument 'f' of task 'fnarg.call' cannot be serialised"), output
        assert f"{function} is a function of __main__" in lines[name] and why in lines[name], output
    assert lines["jobs"] == "4", output  # nothing queued for the refused ones


def test_a_function_of_main_when_the_pool_runs_another_script(tmp_path: Path) -> None:
    """The same module-level function, submitted while ``flask longtask worker`` hosts the pool:
    its workers import the flask command, not this script, and cannot find it."""
    directory = tmp_path / "instance" / "longtask"
    log = tmp_path / "worker.log"
    with log.open("wb") as out:
        worker = subprocess.Popen(
            [str(BIN / "flask"), "--app", "tests.apps.diskcache_app", "longtask", "worker"],
            cwd=ROOT,
            env=env_for(directory, LONGTASK_WORKERS="1", LONGTASK_EMBEDDED_WORKER="0"),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        hosted = wait_for(lambda: holder(str(directory)), 30, "the pool's host")
        assert hosted == (worker.pid, str(BIN / "flask")), hosted  # (what pool.lock says)
        code, output, _ = run(
            tmp_path,
            "elsewhere",
            """\
            app.config["LONGTASK_EMBEDDED_WORKER"] = False
            longtask = LongTask(app)

            @longtask.task
            def call(f, x):
                return f(x)

            def top(x):
                return x + 1

            if __name__ == "__main__":
                with app.app_context():
                    try:
                        call.submit(top, 3)
                    except TypeError as exc:
                        print("TypeError", exc)
            """,
        )
    finally:
        stop(worker)
    assert code == 0, output
    assert "TypeError Argument 'f' of task 'elsewhere.call' cannot be serialised" in output, output
    assert f"top() is a function of __main__ (the script {tmp_path / 'elsewhere.py'})" in output, output
    assert f"the pool is hosted by process {worker.pid}, which runs another script" in output, output


def test_a_scripts_jobs_run_in_one_app_per_worker_made_by_its_factory_once(tmp_path: Path) -> None:
    # 40 coroutine jobs start at once in a new loop worker, where no app exists yet: the worker
    # makes one with the factory, once, and every job runs in it (not an app per job).
    code, output, _ = run(
        tmp_path,
        "factory",
        """
        import asyncio, json
        from flask import current_app

        made = 0

        def make_app():
            global made
            made += 1
            return Flask(__name__)

        longtask = LongTask(app_factory=make_app)

        @longtask.task
        async def where(n: int) -> list:
            await asyncio.sleep(0.1)
            return [os.getpid(), id(current_app._get_current_object()), made]

        if __name__ == "__main__":
            main = make_app()
            longtask.init_app(main)
            with main.app_context():
                jobs = where.submit_many(range(40))
                print(json.dumps([job.result(timeout=30) for job in jobs]))
        """,
    )
    assert code == 0, output
    seen = json.loads(output.strip().splitlines()[-1])
    assert {made for _, _, made in seen} == {1}, seen
    apps: dict[int, set[int]] = {}
    for pid, app, _ in seen:
        apps.setdefault(pid, set()).add(app)
    assert all(len(ids) == 1 for ids in apps.values()), apps
