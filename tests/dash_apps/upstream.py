"""LongTaskManager under Dash's own background-callback tests (``tests/background_callback``).

Those tests and apps are Dash's, kept as Dash wrote them (``tests/background_callback/README.md``)
but for the manager choice: ``utils.get_background_callback_manager()`` calls :func:`get_manager`
when ``LONG_CALLBACK_MANAGER`` is ``longtask`` (the diskcache backend) or ``longtask-celery``
(Celery and redis-server), and each app registers the extension on its server, the documented
``longtask.init_app(app.server)``, written ``handle.init_app(app.server)`` there (``handle`` is
the manager's extension, as it is the cache or the Celery app of Dash's managers).

The jobs run in a worker process started the documented way, ``flask longtask worker``
(:func:`make_worker_app`; on diskcache the pool, on Celery a Celery worker), once per test
session: Dash's tests serve the app from a thread of the test process, and stop that server by
raising ``SystemExit`` in every thread started after it, so nothing of the backend may run in a
thread there (the test process's diskcache backend is not ``embedded``). Every process that
imports one of Dash's apps calls :func:`get_manager`: the test process, and each worker that runs
a job (it imports the app's module to find the job's task). The environment names the state:
``DASH_LONGTASK_DIR`` (the diskcache directory, and the apps' ``test_lock``) and
``DASH_LONGTASK_REDIS_URL``.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import subprocess
import sys
import typing as t
from pathlib import Path

import pytest

from dash_adapter import LongTaskManager
from flask_longtask import JobNotFoundError, LongTask
from flask_longtask.backends import Backend, ThreadBackend

if t.TYPE_CHECKING:  # pragma: no cover
    import dash
    import flask

ROOT = Path(__file__).resolve().parent.parent.parent
#: Dash's own tests run here: its background callbacks', and (with dash[async]) its async ones'.
UPSTREAM = (ROOT / "tests" / "background_callback", ROOT / "tests" / "async_tests")
KINDS = ("longtask", "longtask-celery")
_backend: Backend | None = None
_lock_cache: t.Any = None


class TestLongTaskManager(LongTaskManager):
    """Records the jobs it starts (as Dash's TestDiskCacheManager does), for the teardown."""

    def __init__(self, longtask: LongTask) -> None:
        super().__init__(longtask)
        self.started: list[str] = []
        self.test_lock: t.Any = None

    def call_job_fn(self, key: str, job_fn: t.Any, args: t.Any, context: t.Any) -> str:
        job = super().call_job_fn(key, job_fn, args, context)
        self.started.append(job)
        return job


def _make_backend(*, embedded: bool) -> Backend:
    kind = os.environ.get("LONG_CALLBACK_MANAGER")
    if kind == "longtask-celery":
        from celery import Celery

        from flask_longtask.backends.celery import CeleryBackend

        url = os.environ["DASH_LONGTASK_REDIS_URL"]
        celery = Celery("tests.dash_apps.upstream", broker=url, backend=url)
        celery.conf.broker_connection_retry_on_startup = True
        return CeleryBackend(celery)
    if kind == "longtask":
        from flask_longtask.backends.diskcache import DiskcacheBackend

        return DiskcacheBackend(os.path.join(os.environ["DASH_LONGTASK_DIR"], "jobs"), workers=2, embedded=embedded)
    raise ValueError(f"LONG_CALLBACK_MANAGER must be one of {KINDS}, not {kind!r}.")


def backend() -> Backend:
    """This process's backend for Dash's apps (one per process, shared by every app)."""
    global _backend
    if _backend is None:
        _backend = _make_backend(embedded=False)
        atexit.register(_backend.close)
    return _backend


def make_worker_app() -> flask.Flask:
    """``flask --app 'tests.dash_apps.upstream:make_worker_app()' longtask worker``."""
    from flask import Flask

    app = Flask(__name__)
    LongTask(app, backend=_make_backend(embedded=True))
    return app


def get_manager() -> TestLongTaskManager:
    """A LongTaskManager on a new extension (the app registers it on its server)."""
    global _lock_cache
    import diskcache

    manager = TestLongTaskManager(LongTask(backend=backend()))
    if _lock_cache is None:
        _lock_cache = diskcache.Cache(os.path.join(os.environ["DASH_LONGTASK_DIR"], "test-lock"))
        atexit.register(_lock_cache.close)
    manager.test_lock = diskcache.Lock(_lock_cache, "test-lock")  # held by tests, taken by jobs
    return manager


@contextlib.contextmanager
def setup_app(manager_name: str, app_name: str, package: str = "tests.background_callback") -> t.Iterator[dash.Dash]:
    """Dash's ``setup_background_callback_app`` for LongTaskManager: import the app; at the end,
    cancel the jobs it started that are still running and wait for each to end (Dash's sleeps
    there, for a poll that may still come, are not needed: the server answers while it runs)."""
    import importlib

    from dash import page_registry
    from dash.testing.application_runners import import_app

    utils = importlib.import_module(f"{package}.utils")
    os.environ["LONG_CALLBACK_MANAGER"] = manager_name
    app = None
    try:
        app = import_app(f"{package}.{app_name}")
        yield app
    finally:
        manager = utils.manager  # the app's (Dash's utils keep the last one made)
        if app is not None and isinstance(manager, TestLongTaskManager):
            with app.server.app_context():
                for job_id in manager.started:
                    with contextlib.suppress(JobNotFoundError):
                        job = manager.longtask.get_job(job_id)
                        job.cancel()
                        job.wait(timeout=30)
        os.environ.pop("LONG_CALLBACK_MANAGER", None)
        page_registry.clear()


#: The warm-up's extension (see :meth:`Workers.warm_loop`); the app its job enters in a worker
#: process (which imports this module to find the task, and Dash with it) is this one.
_warm = LongTask()
_warm_app = __import__("flask").Flask(__name__)
_warm.init_app(_warm_app, backend=ThreadBackend(workers=1))


@_warm.task
async def warm_up() -> int:
    """Nothing: a coroutine job that starts a worker of coroutine jobs, which imports this
    module, and Dash with it."""
    return os.getpid()


# -- the worker processes, one per kind and test session ----------------------------------------


class Workers:
    """The worker process of each kind (and Celery's redis-server), started on first use."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.redis: subprocess.Popen[bytes] | None = None
        self.warmed: set[str] = set()
        os.environ["DASH_LONGTASK_DIR"] = str(tmp)

    def ensure(self, kind: str) -> None:
        if kind in self.procs:
            return
        from ..services import start_redis, wait_until

        env = {**os.environ, "LONG_CALLBACK_MANAGER": kind, "PYTHONPATH": str(ROOT)}
        if kind == "longtask-celery":
            if self.redis is None:
                self.redis, os.environ["DASH_LONGTASK_REDIS_URL"] = start_redis(self.tmp)
            env["DASH_LONGTASK_REDIS_URL"] = os.environ["DASH_LONGTASK_REDIS_URL"]
        log_path = self.tmp / f"{kind}-worker.log"
        app = "tests.dash_apps.upstream:make_worker_app()"
        cmd = [sys.executable, "-m", "flask", "--app", app, "longtask", "worker", "--workers", "2"]
        with open(log_path, "wb") as log:
            proc = subprocess.Popen(
                cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        self.procs[kind] = proc
        ready = b"ready." if kind == "longtask-celery" else b"Worker pool for"
        wait_until(lambda: ready in log_path.read_bytes() or proc.poll() is not None, 60, f"the {kind} worker")
        assert proc.poll() is None, log_path.read_text()

    def warm_loop(self, kind: str) -> None:
        """Run a coroutine job once (per kind), before Dash's async tests: its worker of
        coroutine jobs starts and imports Dash (a minute's start under coverage on a loaded
        machine would eat into the 10 s Dash's tests wait for a job's first ``set_props``), as
        the pool's other workers are started before the tests."""
        if kind in self.warmed:
            return
        from flask import Flask

        os.environ["LONG_CALLBACK_MANAGER"] = kind
        try:
            app = Flask(f"{__name__}.warm")
            _warm.init_app(app, backend=backend())
            with app.app_context():
                warm_up.submit().result(timeout=120)
        finally:
            os.environ.pop("LONG_CALLBACK_MANAGER", None)
        self.warmed.add(kind)

    def close(self) -> None:
        from ..services import stop

        for proc in self.procs.values():
            stop(proc)
        if self.redis is not None:
            stop(self.redis)


@pytest.fixture(scope="session")
def dash_longtask_workers(tmp_path_factory: pytest.TempPathFactory) -> t.Iterator[Workers]:
    workers = Workers(tmp_path_factory.mktemp("dash-longtask"))
    yield workers
    workers.close()


@pytest.fixture(autouse=True)
def dash_longtask(request: pytest.FixtureRequest) -> None:
    """For each of Dash's tests (in ``tests/background_callback``, ``tests/async_tests``): the worker process of its
    manager's kind runs. (Nothing for the other tests.)"""
    if any(folder in request.path.parents for folder in UPSTREAM):
        from dash.testing.application_runners import BaseDashRunner

        from ..services import free_port

        # dash_duo's server takes ports from 58050 up, counted in each process: two xdist workers
        # (or two runs on this machine) would serve on the same port. A free one, for each test.
        BaseDashRunner._next_port = free_port()
        workers: Workers = request.getfixturevalue("dash_longtask_workers")
        kind = request.getfixturevalue("manager")
        workers.ensure(kind)
        if UPSTREAM[1] in request.path.parents:  # Dash's async tests: coroutine jobs
            workers.warm_loop(kind)
