"""The Flask extension."""

from __future__ import annotations

import logging
import os
import threading
import typing as t
import weakref
from datetime import datetime

from flask import Blueprint, Flask, current_app, has_app_context

from . import listing, newjobs, settings, signals
from .backends import backend_from_app
from .backends.base import Backend, NewJob
from .cli import longtask_cli
from .config import DEFAULT_CONFIG as DEFAULT_CONFIG
from .job import Job, JobStatus
from .newjobs import new_job_id as new_job_id  # (imported from here by tests and testing.py)
from .store import JobStore
from .task import Task

_log = logging.getLogger(__name__)

#: Every LongTask, for their locks to be made anew in a forked child (a fork while another
#: thread held one would leave it held there for good).
_instances: weakref.WeakSet[LongTask] = weakref.WeakSet()

P = t.ParamSpec("P")
R = t.TypeVar("R")


class _Decorator(t.Protocol):
    """What ``@longtask.task(...)`` returns: an ``async def`` function's jobs return what its
    coroutine returns."""

    @t.overload
    def __call__(self, func: t.Callable[P, t.Coroutine[t.Any, t.Any, R]], /) -> Task[P, R]: ...

    @t.overload
    def __call__(self, func: t.Callable[P, R], /) -> Task[P, R]: ...

    def __call__(self, func: t.Callable[..., t.Any], /) -> t.Any: ...


class _State:
    """Per-app state, kept in ``app.extensions["longtask"]``."""

    def __init__(self, longtask: LongTask, backend: Backend, store: JobStore) -> None:
        self.longtask = longtask
        self.backend = backend
        self.store = store


class LongTask:
    """Run long work off the request: submit, watch progress, cancel, get results, memoize.

    >>> from flask_longtask.backends import ThreadBackend
    >>> app = Flask(__name__)
    >>> longtask = LongTask(app, backend=ThreadBackend(workers=2))
    >>> @longtask.task
    ... def double(n: int) -> int:
    ...     return n * 2
    >>> with app.app_context():
    ...     double.submit(21).result(timeout=10)
    42

    :param app: the app to register on now; or call :meth:`init_app` later (one instance may
        serve several apps). A Dash app's Flask server is ``dash_app.server``.
    :param backend: where jobs run and their state lives, shared by every app this instance is
        registered on. Default: built from ``LONGTASK_BACKEND`` for each app.
    :param app_factory: for worker processes that import your tasks' module but not a module
        that creates the app (the app-factory pattern): called with no arguments to make the app
        jobs run in.
    """

    def __init__(
        self,
        app: Flask | None = None,
        *,
        backend: Backend | None = None,
        app_factory: t.Callable[[], Flask] | None = None,
    ) -> None:
        self._backend = backend
        self._app_factory = app_factory
        self._apps: weakref.WeakSet[Flask] = weakref.WeakSet()
        self._tasks: dict[str, Task[..., t.Any]] = {}
        self._factory_app: Flask | None = None
        self._factory_lock = threading.RLock()
        _instances.add(self)
        self._owner_loader: t.Callable[[], str | None] | None = None
        self._authorize: t.Callable[[Task[..., t.Any]], bool] | None = None
        if app is not None:
            self.init_app(app)

    def __repr__(self) -> str:
        return f"<LongTask backend={self._backend!r}>"

    def init_app(self, app: Flask, *, backend: Backend | None = None) -> None:
        """Register on ``app``: set config defaults and make its backend.

        :param backend: this app's backend, overriding the one given to the constructor and
            ``LONGTASK_BACKEND``.
        :raises RuntimeError: a LongTask is already registered on this app.
        :raises TypeError: a ``LONGTASK_*`` setting of the wrong type (named, with a valid value).
        :raises ValueError: a ``LONGTASK_*`` setting out of range, or a ``LONGTASK_BACKEND`` that
            does not import.
        """
        if "longtask" in app.extensions:
            raise RuntimeError(
                "A 'LongTask' instance has already been registered on this Flask app."
                " Import and use that instance instead."
            )
        for key, value in DEFAULT_CONFIG.items():
            app.config.setdefault(key, value)
        settings.check(app.config)  # (and warns about unknown LONGTASK_* keys)
        backend = backend or self._backend or backend_from_app(app)
        backend.init_app(app)
        app.extensions["longtask"] = _State(self, backend, JobStore.from_config(backend, app.config))
        self._apps.add(app)
        app.cli.add_command(longtask_cli)
        if app.config["LONGTASK_HTTP_PREFIX"] is not None:
            app.register_blueprint(self.blueprint(app.config["LONGTASK_HTTP_PREFIX"]))

    def _state(self, app: Flask | None = None) -> _State:
        if app is None:
            if not has_app_context():
                raise RuntimeError(
                    "Working outside of application context: submit jobs and look them up inside a"
                    " request or 'with app.app_context():'."
                )
            app = t.cast(Flask, current_app._get_current_object())  # type: ignore[attr-defined]
        state = app.extensions.get("longtask")
        if state is None or state.longtask is not self:
            raise RuntimeError(
                "The current Flask app is not registered with this 'LongTask' instance."
                " Did you forget to call 'init_app', or did you import a different instance?"
            )
        return t.cast(_State, state)

    @property
    def backend(self) -> Backend:
        """The current app's backend."""
        return self._state().backend

    @t.overload
    def task(self, func: t.Callable[P, t.Coroutine[t.Any, t.Any, R]], /) -> Task[P, R]: ...

    @t.overload
    def task(self, func: t.Callable[P, R], /) -> Task[P, R]: ...

    @t.overload
    def task(
        self,
        *,
        name: str | None = None,
        cache_by: t.Sequence[t.Callable[[], t.Any]] | None = None,
        expire: float | None = None,
        http: bool = False,
        cache_ignore: t.Iterable[str] = (),
        time_limit: float | None = None,
        retries: int = 0,
        retry_backoff: float = 1.0,
        retry_on: type[BaseException] | t.Iterable[type[BaseException]] = (Exception,),
    ) -> _Decorator: ...

    def task(
        self,
        func: t.Callable[..., t.Any] | None = None,
        *,
        name: str | None = None,
        cache_by: t.Sequence[t.Callable[[], t.Any]] | None = None,
        expire: float | None = None,
        http: bool = False,
        cache_ignore: t.Iterable[str] = (),
        time_limit: float | None = None,
        retries: int = 0,
        retry_backoff: float = 1.0,
        retry_on: type[BaseException] | t.Iterable[type[BaseException]] = (Exception,),
    ) -> t.Any:
        """Decorate a function so it can run as a job: ``@longtask.task`` or ``@longtask.task(...)``.

        :param name: the task's name (default ``module.qualname``); workers find it by name.
        :param cache_by: turn on memoization: zero-argument callables, evaluated at each submit
            in the submitting request, whose values join the arguments in the memo key (``[]``
            memoizes on the arguments alone).
        :param expire: seconds a memoized result is reused (default ``LONGTASK_RESULT_EXPIRE``).
        :param http: let the HTTP API (:meth:`blueprint`) submit this task.
        :param cache_ignore: names of parameters left out of the memo key (still passed to the
            job): request details, callbacks' bookkeeping, anything that must not split the cache.
        :param time_limit: seconds a job may run, counted from its start (not its time in the
            queue); default ``LONGTASK_TIME_LIMIT`` (none), ``math.inf`` for none whatever the
            default. At the limit the job sees ``current_job.is_cancel_requested``; after
            ``LONGTASK_CANCEL_GRACE`` it is stopped by force where the backend can. It then ends
            failed, with ``TimeLimitExceeded``.
        :param retries: how many more times a job runs after an attempt that raised one of
            ``retry_on`` (default none). Between attempts it is queued; ``job.attempt`` counts.
        :param retry_backoff: seconds before the first retry; each next waits twice as long,
            with up to 25% of jitter.
        :param retry_on: the exception types retried (default ``Exception``); name
            ``TimeLimitExceeded`` to retry a job stopped at its time limit. A cancelled job is
            never retried.
        """

        def decorate(f: t.Callable[..., t.Any]) -> Task[..., t.Any]:
            return Task(
                self,
                f,
                name=name,
                cache_by=cache_by,
                expire=expire,
                http=http,
                cache_ignore=cache_ignore,
                time_limit=time_limit,
                retries=retries,
                retry_backoff=retry_backoff,
                retry_on=retry_on,
            )

        return decorate if func is None else decorate(func)

    def owner_loader(self, func: t.Callable[[], str | None]) -> t.Callable[[], str | None]:
        """Decorate the function that says who makes the current HTTP request.

        Jobs submitted over HTTP record it, and only the same owner can read, stream or cancel
        them (others get ``404``). Default: a random id kept in the Flask session.
        """
        self._owner_loader = func
        return func

    def authorize(self, func: t.Callable[[Task[..., t.Any]], bool]) -> t.Callable[[Task[..., t.Any]], bool]:
        """Decorate the function that decides whether the current request may submit a task.

        It receives the :class:`Task` (only tasks marked ``http=True`` are ever offered) and
        returns ``True`` to allow. Default: allow every ``http=True`` task.
        """
        self._authorize = func
        return func

    def blueprint(self, url_prefix: str = "/longtask") -> Blueprint:
        """The HTTP API as a blueprint: register it with ``app.register_blueprint(...)``.

        Or set ``LONGTASK_HTTP_PREFIX`` and ``init_app`` registers it for you.
        """
        from .http import make_blueprint

        return make_blueprint(self, url_prefix)

    def dashboard(
        self, url_prefix: str = "/longtask/dashboard", *, authorize: t.Callable[[], t.Any] | None = None
    ) -> Blueprint:
        """The jobs dashboard as a blueprint: ``app.register_blueprint(longtask.dashboard(...))``
        (on a Dash app, ``dash_app.server.register_blueprint(...)``).

        A page with the count of jobs in each status, the queue and the workers, and a table of
        the jobs, filtered by status and task and searched by id, that updates itself (a
        Server-Sent Events stream, or polling); a page per job with its arguments, result, error
        and traceback, progress and timeline; buttons to cancel a job and to purge the finished
        ones. See ``docs/dashboard.md``.

        :param url_prefix: where it is served.
        :param authorize: a function without arguments, run before every request to the
            dashboard (read ``flask.request`` or your login's ``current_user``): anything but a
            true value answers ``403``. Without one, the dashboard answers ``403`` unless the
            app is in debug mode. Who passes sees every job, and each failed job's full error
            and traceback, whatever ``LONGTASK_HTTP_ERRORS`` says.
        :raises TypeError: ``authorize`` is not callable.
        """
        from .dashboard import make_dashboard

        return make_dashboard(self, url_prefix, authorize)

    def get_job(self, job_id: str) -> Job[t.Any]:
        """The job with this id, from any process sharing the backend.

        :raises JobNotFoundError: no such job, or its record has expired.
        """
        store = self._state().store
        store.read_record(job_id)
        return store.job(job_id)

    def jobs(
        self,
        status: JobStatus | str | None = None,
        task: Task[..., t.Any] | str | None = None,
        owner: str | None = None,
        since: datetime | float | None = None,
        limit: int = 100,
        before: str | None = None,
    ) -> list[Job[t.Any]]:
        """The jobs the backend stores, newest first, filtered, a page at a time.

        Every backend keeps an index of its jobs for this (see :meth:`Backend.list_jobs
        <flask_longtask.backends.Backend.list_jobs>`): a page costs a look at the index and a
        read of the records on it, however many jobs are stored. The statuses are what
        ``job.status`` says at the time of the call.

        >>> from flask_longtask.backends import ThreadBackend
        >>> app = Flask(__name__)
        >>> longtask = LongTask(app, backend=ThreadBackend(workers=1))
        >>> square = longtask.task(lambda n: n * n, name="square")
        >>> with app.app_context():
        ...     first, second = square.submit(2), square.submit(3)
        ...     second.wait(10), first.wait(10)
        ...     [job.id for job in longtask.jobs(task="square")] == [second.id, first.id]
        ...     longtask.jobs(status="succeeded", limit=1, before=second.id) == [first]
        (<JobStatus.SUCCEEDED: 'succeeded'>, <JobStatus.SUCCEEDED: 'succeeded'>)
        True
        True

        :param status: only jobs with this status.
        :param task: only jobs of this task (a :class:`Task` or its name).
        :param owner: only jobs of this owner (see :meth:`owner_loader`).
        :param since: only jobs submitted at or after this time (a ``datetime``, or epoch
            seconds).
        :param limit: at most this many (1 to 1000).
        :param before: the next page: only jobs older than the job with this id (the last of the
            page before).
        :raises ValueError: an unknown status, a limit out of range.
        """
        name = task.name if isinstance(task, Task) else task
        found, wanted = listing.query(status=status, task=name, owner=owner, since=since, before=before, limit=limit)
        store = self._state().store
        return [store.job(record["id"]) for record in listing.find(store, found, wanted)]

    def counts(self) -> dict[str, int]:
        """How many stored jobs have each status (``"queued"``, ``"running"``, ``"succeeded"``,
        ``"failed"``, ``"cancelled"``), with ``"queue_length"`` and ``"workers"`` where the
        backend knows them.

        From the backend's index, like :meth:`jobs`: the finished jobs are counted there, and
        the claims of the jobs not yet ended are read to tell queued ones from running ones.
        """
        return listing.counts(self._state().store)

    def clear_cache(self, task: Task[..., t.Any] | None = None) -> None:
        """Forget memoized results: of one task, or of every task when ``task`` is ``None``."""
        self._state().store.clear_memo(None if task is None else task.name)

    # -- used by Task and the worker ------------------------------------------------------------

    def _submit(
        self, task: Task[P, R], args: tuple[t.Any, ...], kwargs: dict[str, t.Any], owner: str | None = None
    ) -> Job[R]:
        state = self._state()
        app = t.cast(Flask, current_app._get_current_object())  # type: ignore[attr-defined]
        store, backend = state.store, state.backend
        bound, call, payload = newjobs.bind(task, backend, args, kwargs)

        memo_key = None
        if task.cache_by is not None:
            memo_key = newjobs.memo_key(task, store, bound, [f() for f in task.cache_by])
            hit = store.find_memo(memo_key)
            if hit is not None:
                signals.send(signals.cache_hit, app, job=hit, in_flight=False)
                return hit

        newjobs.check_room(app, backend, 1)
        job_id = new_job_id()
        if memo_key is not None:
            other = store.join_inflight(memo_key, job_id)
            if other is not None:
                signals.send(signals.cache_hit, app, job=other, in_flight=True)
                return other

        job: Job[R] = store.job(job_id)
        try:
            backend.store_and_enqueue(newjobs.new_job(app, store, task, job, call, payload, memo_key, owner))
        except BaseException:
            store.discard(job_id, memo_key)
            raise
        return job

    def _submit_many(self, task: Task[P, R], calls: t.Sequence[tuple[t.Any, ...]]) -> list[Job[R]]:
        """:meth:`Task.submit_many`: every call checked first (arguments, memo keys, the queue's
        room for the jobs it will make); then, :data:`~.newjobs.BATCH` jobs at a time, their memo keys
        taken and the jobs stored and queued (together, where the backend ``stores_batches``)."""
        state = self._state()
        app = t.cast(Flask, current_app._get_current_object())  # type: ignore[attr-defined]
        store, backend = state.store, state.backend
        prepared = [newjobs.bind(task, backend, args, {}, item=n) for n, args in enumerate(calls)]
        keys_: list[str | None] = [None] * len(prepared)
        if task.cache_by is not None:
            values = [f() for f in task.cache_by]  # (one request: once)
            for n, (bound, _, _) in enumerate(prepared):
                try:
                    keys_[n] = newjobs.memo_key(task, store, bound, values)
                except TypeError as exc:
                    raise TypeError(f"{task.name}() (item {n} of submit_many): {exc}") from None
        jobs: list[Job[R] | None] = [None if key is None else store.find_memo(key) for key in keys_]
        first: dict[str, int] = {}  # memo key -> its first call in the batch without a result
        for n, key in enumerate(keys_):
            if key is not None and jobs[n] is None:
                first.setdefault(key, n)
        fresh = [n for n, key in enumerate(keys_) if jobs[n] is None and (key is None or first[key] == n)]
        newjobs.check_room(app, backend, len(fresh))  # (every new job counts, even one a worker takes at once)
        for hit in jobs:
            if hit is not None:
                signals.send(signals.cache_hit, app, job=hit, in_flight=False)

        made: list[tuple[str, str | None]] = []  # (job id, memo key) of each new job, in order
        queued = 0  # how many of them are queued
        try:
            for start in range(0, len(fresh), newjobs.BATCH):
                # A batch at a time: a memo key taken is stored soon (a submit() of the same call
                # meanwhile waits for the job's record, and takes the key over after 5 s).
                new: list[NewJob] = []
                for n in fresh[start : start + newjobs.BATCH]:
                    _, call, payload = prepared[n]
                    job_id, key = new_job_id(), keys_[n]
                    other = None if key is None else store.join_inflight(key, job_id)
                    if other is not None:
                        signals.send(signals.cache_hit, app, job=other, in_flight=True)
                        jobs[n] = other
                        continue
                    made.append((job_id, key))
                    job: Job[R] = store.job(job_id)
                    new.append(newjobs.new_job(app, store, task, job, call, payload, key, None))
                    jobs[n] = job
                if backend.stores_batches:
                    if new:
                        backend.store_and_enqueue_many(new)  # (all or none)
                    queued += len(new)
                else:
                    for one in new:
                        backend.store_and_enqueue(one)
                        queued += 1
        except BaseException:
            newjobs.undo(store, made, queued)
            raise
        for n, key in enumerate(keys_):
            if jobs[n] is None:  # the same call as an earlier one of the batch: its job
                jobs[n] = jobs[first[t.cast(str, key)]]
                signals.send(signals.cache_hit, app, job=jobs[n], in_flight=True)
        return t.cast("list[Job[R]]", jobs)

    def _app_for(self, import_name: str) -> Flask:
        """The app a job submitted by app ``import_name`` runs in, in this (worker) process: the
        registered app of that name (a script's app, ``__main__`` where it was submitted, is
        ``__mp_main__`` in a pool worker that imported the script again); else the only one;
        else the one ``app_factory`` made here, once."""
        names = _MAINS if import_name in _MAINS else (import_name,)
        apps = list(self._apps)
        for app in apps:
            if app.import_name in names:
                return app
        with self._factory_lock:  # (jobs start in many threads at once: one app from the factory)
            if self._factory_app is not None:
                return self._factory_app
            if len(apps) == 1:
                return apps[0]
            if self._app_factory is not None:
                app = self._app_factory()
                if app not in self._apps:
                    self.init_app(app)
                self._factory_app = app  # _apps holds apps weakly: keep this one for the next jobs
                return app
        raise LookupError(
            f"No Flask app {import_name!r} is registered with this LongTask in this worker process."
            " Create the app where the tasks are defined, or pass 'LongTask(app_factory=create_app)'."
        )


#: A script's module names: ``__main__`` where it runs, ``__mp_main__`` in the pool's workers.
_MAINS: t.Final = ("__main__", "__mp_main__")


def _after_fork_in_child() -> None:
    for longtask in list(_instances):
        longtask._factory_lock = threading.RLock()


os.register_at_fork(after_in_child=_after_fork_in_child)
