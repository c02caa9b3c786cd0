"""LongTaskManager: Dash's background-callback manager, running each callback as a job."""

from __future__ import annotations

import logging
import typing as t
from dataclasses import dataclass

import flask
from dash.background_callback.managers import BaseBackgroundCallbackManager

from flask_longtask import (
    Job,
    JobNotFoundError,
    JobStatus,
    LongTask,
    Task,
)

from . import _job, _pages

_log = logging.getLogger(__name__)

_SECRET_KEY = "dash-adapter:signing-secret"
#: How many times a request submits again when the shared job it joined is being cancelled.
_REJOIN = 5
_ACTIVE = (JobStatus.QUEUED, JobStatus.RUNNING)


@dataclass(frozen=True)
class _Snapshot:
    """One consistent reading of a job for one poll of one page: status first, then progress."""

    job: Job[t.Any] | None
    status: JobStatus | None
    published: _job.Published | None
    #: The number of the last report this page had been given before this poll.
    seen: int
    #: Whether this page left the job (a shared one that others still wait for).
    left: bool


class LongTaskManager(BaseBackgroundCallbackManager):
    """A Dash background-callback manager that runs every background callback as a Flask-LongTask job.

    Use it wherever Dash takes a manager; the callbacks themselves do not change::

        longtask = LongTask()
        manager = LongTaskManager(longtask)
        app = dash.Dash(__name__, background_callback_manager=manager)
        longtask.init_app(app.server)

    Each background callback becomes one task, registered when the callback is decorated under
    a name derived from the function and its outputs, so a worker process that imports the
    app's module finds the same task. Jobs run in the Flask app context, on whatever backend
    ``longtask`` uses.

    Each request runs its own job, as on Dash's managers, with Dash's callback context: its
    inputs, and the request's cookies, headers, path, remote address and query arguments. With
    ``cache_by``, requests whose memo keys are equal share one job, in flight and after (a hit
    starts nothing); the key is Dash's: the callback, its arguments less
    ``cache_args_to_ignore``, and the ``cache_by`` values. Each page that shares a job is one of
    its subscribers: a page that cancels it, or starts the callback again, leaves it, and the job
    is cancelled when no page is left. Each page gets each progress value and each ``set_props``
    once, at its first poll after the job reports it (a page that joins late gets the latest at
    once), and the poll that brings the result brings what it has not seen yet.

    :param longtask: the extension; it may be registered on the Dash app's server later.
    :param cache_by: turn on memoization (as in Dash): zero-argument functions whose values join
        the callback's arguments in the memo key. ``[]`` memoizes on the arguments alone. Called
        in the request: a per-user value (``lambda: flask.request.cookies.get("user")``) keeps
        each user's jobs and results apart.
    :param expire: seconds a memoized result is reused (default ``LONGTASK_RESULT_EXPIRE``).
    :param single_flight: without ``cache_by``, let requests with equal keys share a job while
        it runs (and only then). Off by default: a shared job runs with the context, cookies
        included, of the request that started it.
    """

    def __init__(
        self,
        longtask: LongTask,
        cache_by: t.Sequence[t.Callable[[], t.Any]] | t.Callable[[], t.Any] | None = None,
        expire: float | None = None,
        *,
        single_flight: bool = False,
    ) -> None:
        if not isinstance(longtask, LongTask):
            raise TypeError(f"LongTaskManager needs a 'LongTask' instance, got {longtask!r}.")
        if callable(cache_by):
            cache_by = [cache_by]
        if cache_by is not None:
            cache_by = list(cache_by)
            if not all(callable(f) for f in cache_by):
                raise TypeError("'cache_by' must be a list of zero-argument functions.")
        if expire is not None and expire < 0:
            raise ValueError(f"'expire' must be a number of seconds >= 0, got {expire!r}.")
        self.longtask = longtask
        self.expire = expire
        self.single_flight = single_flight
        self._keys: dict[tuple[t.Callable[..., t.Any], str], str] = {}
        # Registers every background callback decorated so far (Dash keeps them globally).
        super().__init__(cache_by)  # type: ignore[no-untyped-call]

    @property
    def handle(self) -> LongTask:
        """The extension the jobs run on, as ``handle`` is the cache or the Celery app of Dash's managers."""
        return self.longtask

    def __repr__(self) -> str:
        return f"<LongTaskManager {self.longtask!r} cache_by={self.cache_by is not None}>"

    # -- registration (at decoration time, in every process that imports the app) --------------

    def make_job_fn(self, fn: t.Callable[..., t.Any], progress: bool, key: str | None = None) -> Task[..., t.Any]:
        """Register the task that runs callback ``fn``; Dash keeps it in ``func_registry[key]``."""
        if self.cache_by is not None:  # memoized: identical requests share results for `expire`
            cache_by: list[t.Callable[[], t.Any]] | None = list(self.cache_by)
            expire, mode = (
                self.expire,
                f":memo{'' if self.expire is None else f'-{self.expire:g}'}",
            )
        elif self.single_flight:  # only while in flight: a memo entry that expires at once
            cache_by, expire, mode = [], 0.0, ""
        else:
            cache_by, expire, mode = None, None, ":plain"
        digest = key or self._hash(fn, "")
        func = _job.make_job_function(fn, progress)
        # The core names the task "<module>.<qualname>", with a script's module named after its
        # file, so a worker that imports the app's module registers the same name.
        func.__qualname__ = f"{func.__qualname__}:dash-{digest[:16]}{mode}"
        return self.longtask.task(cache_by=cache_by, expire=expire, cache_ignore=["hidden"])(func)

    # -- a new request: submit -----------------------------------------------------------------

    def build_cache_key(
        self,
        fn: t.Callable[..., t.Any],
        args: t.Any,
        cache_args_to_ignore: t.Any,
        triggered: t.Any,
    ) -> str:
        """Submit the callback's job and return its id, which serves as Dash's cache key.

        Dash later asks for progress and ``set_props`` by cache key alone; making the key the
        job id means every such call knows its job with no key-to-job table to share between
        processes. The memo key of a shared job is Dash's: the task (the callback), its
        arguments less ``cache_args_to_ignore``, the triggering inputs unless
        ``cache_ignore_triggered``, and the ``cache_by`` values. The callback context travels
        with the job, outside the key. The page joins a shared job as a subscriber.
        """
        if cache_args_to_ignore is None:
            cache_args_to_ignore = []
        elif not isinstance(cache_args_to_ignore, (list, tuple)):
            cache_args_to_ignore = [cache_args_to_ignore]
        kept, ignored = _job.split_args(args, cache_args_to_ignore)
        hidden = {"args": ignored, "context": _job.capture_context()}
        task = self._task_for(fn)
        if not task.is_memoized:
            return task.submit(kept, triggered, hidden).id
        backend, page = self.longtask.backend, _pages.page_id()
        expire = float(flask.current_app.config["LONGTASK_RESULT_EXPIRE"])
        for _ in range(_REJOIN):
            job = task.submit(kept, triggered, hidden)
            with _pages.locked(backend, job.id):
                # Under the job's lock, the last page to leave it cancels it: joining a job not
                # being cancelled now means it is not cancelled while this page is subscribed.
                if job.is_finished or not job.is_cancel_requested:
                    _pages.join(backend, job.id, page, expire)
                    return job.id
            # Joined a job the last page just left: a new submit does not join it.
        raise RuntimeError(f"Could not join or start a job of {task.name}: each one found was being cancelled.")

    def _task_for(self, fn: t.Callable[..., t.Any]) -> Task[..., t.Any]:
        callback_id = t.cast(str, (flask.request.get_json(silent=True) or {}).get("output", ""))
        key = self._keys.get((fn, callback_id)) or self._hash(fn, callback_id)
        try:
            task = t.cast("Task[..., t.Any]", self.func_registry[key])
        except KeyError:
            raise RuntimeError(
                f"Background callback {callback_id!r} is not registered with this LongTaskManager."
                " Create the manager in the module that defines the callbacks."
            ) from None
        self._keys[(fn, callback_id)] = key  # only ids that name a real callback are remembered
        return task

    @staticmethod
    def _hash(fn: t.Callable[..., t.Any], callback_id: str) -> str:
        # Dash's own key for a background function: its source and its callback's outputs.
        hash_function = t.cast(t.Callable[..., str], BaseBackgroundCallbackManager.hash_function)
        return hash_function(fn, callback_id)

    def call_job_fn(self, key: str, job_fn: t.Any, args: t.Any, context: t.Any) -> str:
        """Return the job's id: :meth:`build_cache_key` already submitted it."""
        return key

    # -- polls ----------------------------------------------------------------------------------

    def _snapshot(self, job_id: str) -> _Snapshot:
        # Read once per request: the page's cursor, the status, then progress. A job stores its
        # last progress before it ends, so a poll that returns the result has the final
        # progress. The cursor moves at once to the latest report: this poll gives it.
        cache: dict[str, _Snapshot] = flask.g.setdefault("_dash_adapter_snapshots", {})
        snapshot = cache.get(job_id)
        if snapshot is None:
            backend, page = self.longtask.backend, _pages.page_id()
            seen, pages = _pages.read(backend, job_id, page)
            try:
                job = self.longtask.get_job(job_id)
                status = job.status
                published = t.cast("_job.Published | None", job.progress)
            except JobNotFoundError:
                job, status, published = None, None, None
            if published is not None and published["seq"] > seen:
                _pages.move_cursor(backend, job_id, page, published["seq"])
            left = pages is not None and page in pages["left"]
            snapshot = cache[job_id] = _Snapshot(job, status, published, seen, left)
        return snapshot

    def get_progress(self, key: str) -> list[t.Any] | None:
        """The latest progress value, one item per progress output, if this page has not had it."""
        snapshot = self._snapshot(key)
        progress = snapshot.published["progress"] if snapshot.published else None
        if snapshot.left or not progress or progress[0] <= snapshot.seen:
            return None
        return t.cast("list[t.Any]", progress[1])

    def result_ready(self, key: str) -> bool:
        """Whether the job has ended (with a result, an error or cancelled)."""
        status = self._snapshot(key).status
        return status is not None and status.is_finished

    def get_result(self, key: str, job: t.Any) -> t.Any:
        """The callback's return value; Dash's error record for a failed job; else ``UNDEFINED``.

        Results are never deleted on read: every page polling the job gets them, until they
        expire (``LONGTASK_RESULT_EXPIRE``); a page that left the job gets nothing.
        """
        snapshot = self._snapshot(key)
        if snapshot.left:
            return self.UNDEFINED
        if snapshot.status is JobStatus.SUCCEEDED and snapshot.job is not None:
            try:
                return snapshot.job.result(timeout=0)
            except JobNotFoundError:
                return self.UNDEFINED
        if snapshot.status is JobStatus.FAILED and snapshot.job is not None:
            error = snapshot.job.error or {}
            message = error.get("message") or error.get("type", "the job failed")
            return {
                "background_callback_error": {
                    "msg": message,
                    "tb": error.get("traceback", ""),
                }
            }
        return self.UNDEFINED

    def job_running(self, job: t.Any) -> bool:
        """Whether the job is queued or running, nobody asked it to stop, and this page is on it.

        A job being cancelled counts as stopped at once, so the poll right after a cancel
        ends the spinner and resets the ``running`` outputs, even while the job winds down; so
        does a shared job for a page that left it.
        """
        if not job:
            return False
        snapshot = self._snapshot(str(job))
        return (
            snapshot.status in _ACTIVE
            and snapshot.job is not None
            and not snapshot.left
            and not snapshot.job.is_cancel_requested
        )

    def get_updated_props(self, key: str) -> dict[str, dict[str, t.Any]]:
        """The ``set_props`` calls this page has not been given yet, merged per component."""
        snapshot = self._snapshot(key)
        published, seen = snapshot.published, snapshot.seen
        if snapshot.left or not published or not published["props"] or published["seq"] <= seen:
            return {}
        updates: dict[str, dict[str, t.Any]] = {}
        for component_id, props in published["props"].items():
            new = {prop: value for prop, (seq, value) in props.items() if seq > seen}
            if new:
                updates[component_id] = new
        return updates

    # -- cancel -----------------------------------------------------------------------------------

    def terminate_job(self, job: t.Any) -> None:
        """This page leaves the job (Cancel, or the callback started again); the job is
        cancelled if no page is left on it. The page's next poll reports it stopped (see
        :meth:`job_running`)."""
        if not job:
            return
        job_id, backend = str(job), self.longtask.backend
        expire = float(flask.current_app.config["LONGTASK_RESULT_EXPIRE"])
        with _pages.locked(backend, job_id):
            if _pages.leave(backend, job_id, _pages.page_id(), expire):
                try:
                    self.longtask.get_job(job_id).cancel()
                except JobNotFoundError:
                    pass
        if flask.has_app_context():
            flask.g.pop("_dash_adapter_snapshots", None)

    def terminate_unhealthy_job(self, job: t.Any) -> bool:
        """Nothing to do: the core itself fails a job whose worker died."""
        return False

    # -- the signing secret shared by every web process ------------------------------------------

    def get_or_create_signing_secret(self, generate: t.Callable[[], bytes]) -> bytes:
        """Dash's secret for signing job handles, created once in the backend's shared storage."""
        backend = self.longtask.backend
        backend.add(_SECRET_KEY, generate())
        return t.cast(bytes, backend.get(_SECRET_KEY))
