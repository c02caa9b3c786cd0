"""The one function that runs a job off the request: :func:`execute`.

Every backend ends up here, in whatever thread or process it runs jobs in. It claims the job
exactly once, runs it inside the app context, feeds progress, cancellation and the heartbeat
through :data:`current_job`, and stores the outcome through :class:`~flask_longtask.store.JobStore`.
A backend that sees a worker die (or stops one) calls :func:`mark_lost`.
"""

from __future__ import annotations

import collections
import contextvars
import functools
import logging
import math
import os
import socket
import threading
import time
import typing as t
from dataclasses import dataclass

from . import coroutines, signals
from .attempts import attempt_of, retries_of, retry_delay, time_limit_error
from .backends.base import MISSING, Backend, JobRequest
from .claims import owner_pid as owner_pid  # (where it was first: importers read it here)
from .ending import Patience, outcome
from .exceptions import TimeLimitExceeded
from .job import JobStatus
from .store import JobStore, error_record, keys

if t.TYPE_CHECKING:  # pragma: no cover
    from flask import Flask

    from .task import Task

_log = logging.getLogger(__name__)


class JobContext:
    """What a running job sees as :data:`current_job`."""

    def __init__(
        self,
        job_id: str | None,
        app: Flask | None = None,
        store: JobStore | None = None,
        record: dict[str, t.Any] | None = None,
    ) -> None:
        #: The running job's id (``None`` when the task is called inline as a plain function).
        self.id = job_id
        self._app = app
        self._store = store
        #: The job's record as stored ("queued": readers see "running" from the claim), with
        #: its start time; finish() writes it with the final status.
        self._record = record
        #: The latest value not yet written (at most one: each new one replaces the last).
        self._latest: collections.deque[t.Any] = collections.deque(maxlen=1)
        #: This job's set_progress: the bound append of that one-slot deque, a single C call
        #: (it shadows the method below, which documents it).
        self.set_progress = self._latest.append  # type: ignore[method-assign, assignment]
        self._value: t.Any = None  # the last value taken for writing
        self._seq = 0
        self._cancelled = False
        self._error: BaseException | None = None
        self._lock = threading.Lock()
        now = time.monotonic()
        #: Its time limit in seconds (from its record), the moment it passes, and whether it did.
        limit = None if record is None else record.get("time_limit")
        self._limit: float | None = (
            float(limit) if isinstance(limit, (int, float)) and not isinstance(limit, bool) and limit > 0 else None
        )
        self._limit_at = math.inf if self._limit is None else now + self._limit
        self._limited = False
        self._closed = False
        # The first heartbeat is written at the first tick: the claim stands for one until then.
        self._first_tick = now + (store.progress_interval if store is not None else 0.0)
        self._next_beat = self._first_tick
        self._quiet_until = 0.0  # (the ticker logs its failing updates once in a while)
        #: A coroutine job's (see .coroutines): called once its cancel is seen; whether its
        #: coroutine blocks its loop (no heartbeat then: it, not its neighbours, is found lost).
        self._on_cancel: t.Callable[[], None] | None = None
        self._blocked: t.Callable[[], bool] | None = None
        self._abandoned: str | None = None  # its coroutine outlived its grace: why (not retried)

    @property
    def is_cancel_requested(self) -> bool:
        """Whether someone asked this job to stop; check it in loops and return early."""
        return self._cancelled

    @property
    def progress(self) -> t.Any:
        """The last value given to :meth:`set_progress`."""
        try:
            return self._latest[0]
        except IndexError:  # taken for writing already
            return self._value

    def set_progress(self, value: t.Any) -> None:  # replaced per instance in __init__
        """Publish ``value`` (any serialisable value) as the job's progress.

        Cheap enough for a tight loop: one C-level call keeps the value in memory; the ticker
        thread writes the latest one to the backend at most once every
        ``LONGTASK_PROGRESS_INTERVAL`` seconds, and always at the end, so the last value is
        never lost.

        :raises TypeError: through ``current_job.set_progress``, when an earlier value could not
            be serialised. A job that looked ``set_progress`` up once (or got it as an argument)
            is failed when it ends instead ("The job's last progress value could not be
            serialised"). Outside a job, looking ``current_job.set_progress`` up raises
            ``RuntimeError``.
        """
        self._latest.append(value)

    def _raise_error(self) -> None:
        err, self._error = self._error, None
        raise TypeError(f"A progress value could not be serialised: {err}") from err

    # -- driven by the ticker thread and by execute() -------------------------------------------

    def _flush(self, *, final: bool = False) -> None:
        """Write the latest value, if there is one. ``final``: the job has returned; wait for a
        write the ticker may still be making, so that the end is written after it."""
        store = self._store
        if store is None or (not final and not self._latest):
            return
        with self._lock:
            try:
                value = self._latest.pop()
            except IndexError:
                return
            self._value = value
            try:
                data = store.backend.dumps(value)
            except Exception as exc:
                self._error = exc
                return
            self._seq += 1
            try:
                store.write_progress(t.cast(str, self.id), self._seq, data)
            except BaseException:
                if not self._latest:  # keep it for the next write (and the final one)
                    self._latest.append(value)
                raise
        signals.send(signals.job_progress, self._app, job=store.job(t.cast(str, self.id)), progress=value)

    def _close(self) -> dict[str, t.Any]:
        """Stop ticking for this job (it is ending); return its record for ``finish()``. From
        here on its time limit cannot pass: whether it did is settled."""
        _ticker.remove(self)
        with self._lock:
            self._closed = True
        return t.cast("dict[str, t.Any]", self._record)

    def _tick(self, now: float) -> None:
        store = t.cast(JobStore, self._store)
        job_id = t.cast(str, self.id)
        self._flush()
        if now >= self._limit_at and not self._limited and not self._cancelled:
            # Not once the job has returned (see _close), and the flag is stored before the job
            # can see it: a job that returns at once, and is retried, then finds the flag to
            # take down. A cancel that came first stays a cancel.
            with self._lock:
                if not self._closed:
                    self._limit_at = math.inf
                    try:
                        self._limited = store.exceed_time_limit(job_id, t.cast(float, self._limit))
                    finally:
                        self._cancelled = True
        if not self._cancelled:
            self._cancelled = store.is_cancel_requested(job_id)
        on_cancel = self._on_cancel
        if self._cancelled and on_cancel is not None:
            self._on_cancel = None
            on_cancel()
        if now >= self._next_beat and not (self._blocked is not None and self._blocked()):
            self._next_beat = now + store.heartbeat_timeout / 4
            store.beat(job_id)


class _Ticker:
    """One daemon thread per process that flushes progress, polls cancel flags and beats.

    It is never woken for a job: while jobs come and go it ticks every interval, and a job
    that ends within its first interval costs it nothing (waking a thread costs more than most
    short jobs). After a second with no job it parks until the next one arrives.
    """

    _LINGER = 1.0
    #: Seconds between two logs of a job's failing updates (each tick fails while Redis is away).
    _QUIET = 10.0

    def __init__(self) -> None:
        self._jobs: set[JobContext] = set()
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None
        self._pid = os.getpid()
        self._parked = False
        #: Called with the time (monotonic) at each tick while jobs run, in the ticker thread
        #: (a pool worker hands back the jobs it was sent ahead when its own runs long).
        self.hooks: list[t.Callable[[float], None]] = []

    def add(self, ctx: JobContext) -> None:
        with self._cond:
            if self._pid != os.getpid():  # forked: the old thread is not ours
                self._thread, self._pid, self._parked = None, os.getpid(), False
            self._jobs.add(ctx)
            if self._parked:  # woken once: it then ticks for a second before it parks again
                self._parked = False
                self._cond.notify()
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="longtask-ticker", daemon=True)
                self._thread.start()

    def remove(self, ctx: JobContext) -> None:
        with self._cond:
            self._jobs.discard(ctx)

    def _run(self) -> None:
        interval, idle_since = 0.05, time.monotonic()
        while True:
            with self._cond:
                if not self._jobs and time.monotonic() - idle_since >= self._LINGER:
                    # Until add() wakes it. Not "until a job runs": a short job may be over
                    # before this thread runs again, and then each next one would wake it.
                    self._parked = True
                    while self._parked:
                        self._cond.wait()
                    idle_since = time.monotonic()
                jobs = list(self._jobs)
            if jobs:
                interval = min(t.cast(JobStore, j._store).progress_interval for j in jobs)
            time.sleep(interval)
            with self._cond:
                jobs = list(self._jobs)
            now = time.monotonic()
            if jobs:
                idle_since = now
            for ctx in jobs:
                if now < ctx._first_tick:  # started within the last interval: not yet
                    continue
                try:
                    ctx._tick(now)
                except Exception:  # a backend hiccup must not kill the ticker
                    if now >= ctx._quiet_until:  # (while storage is away: once per _QUIET seconds)
                        ctx._quiet_until = now + self._QUIET
                        _log.exception("Progress/heartbeat update of job %s failed.", ctx.id)
            for hook in self.hooks if jobs else ():
                try:
                    hook(now)
                except Exception:
                    _log.exception("A ticker hook failed.")


_ticker = _Ticker()
_current: contextvars.ContextVar[JobContext] = coroutines.JOB  # (a coroutine job's tasks are found by it)
_OUTSIDE = "Working outside of a job: 'current_job' is only set inside a task."


class _CurrentJobProxy:
    """What ``current_job`` is: each access reads the job running in this context.

    Written out by hand instead of werkzeug's ``LocalProxy`` because ``set_progress`` sits in
    users' tight loops: this costs one Python call per use, ``LocalProxy`` several.
    """

    __slots__ = ()

    @staticmethod
    def _get() -> JobContext:
        try:
            return _current.get()
        except LookupError:
            raise RuntimeError(_OUTSIDE) from None

    @property
    def id(self) -> str | None:
        return self._get().id

    @property
    def is_cancel_requested(self) -> bool:
        try:
            return _current.get()._cancelled
        except LookupError:
            raise RuntimeError(_OUTSIDE) from None

    @property
    def progress(self) -> t.Any:
        return self._get().progress

    @property
    def set_progress(self) -> t.Callable[[t.Any], None]:
        # The running job's own C-level setter: ``current_job.set_progress(v)`` costs this
        # lookup and one C call.
        try:
            ctx = _current.get()
        except LookupError:
            raise RuntimeError(_OUTSIDE) from None
        if ctx._error is not None:
            ctx._raise_error()
        return ctx.set_progress

    def __repr__(self) -> str:
        ctx = _current.get(None)
        return "<current_job: none>" if ctx is None else f"<current_job {ctx.id}>"


#: The job running in this thread: ``set_progress(value)``, ``is_cancel_requested``, ``id``,
#: ``progress`` (see :class:`JobContext`). Inside a task called inline as a plain function it
#: is a stand-in whose progress goes nowhere.
current_job: JobContext = t.cast(JobContext, _CurrentJobProxy())


def run_inline(func: t.Callable[..., t.Any], args: t.Any, kwargs: t.Any) -> t.Any:
    """Call a task's function directly, with a stand-in :data:`current_job`."""
    token = _current.set(JobContext(None))
    try:
        if coroutines.is_coroutine_task(func):
            return coroutines.run_inline(func, args, kwargs)
        return func(*args, **kwargs)
    finally:
        _current.reset(token)


@functools.lru_cache(maxsize=64)
def owner_of(pid: int, thread: int) -> str:
    """Who claims a job, as stored in its claim: host name, process id and thread id."""
    return f"{socket.gethostname()}:{pid}:{thread}"


def _owner() -> str:
    """Who claims a job: host, process and thread (the host name is looked up once)."""
    return owner_of(os.getpid(), threading.get_ident())


def claim_value() -> dict[str, t.Any]:
    """What a worker's claim of a job stores: who claims it, and since when it runs."""
    return {"by": _owner(), "at": time.time()}


@dataclass
class Handoff:
    """A job already claimed for this worker by whoever handed it over (the diskcache pool),
    with what that claim read: :func:`execute` runs it without a claim or a read of its own."""

    #: The claim's time: the job runs from then.
    started: float
    #: Its ``job:`` record as read with the claim.
    record: dict[str, t.Any]
    #: Its ``request:`` record; ``None``: too large to hand over, :func:`execute` reads it.
    request: dict[str, t.Any] | None
    #: Its cancel flag was set when it was claimed: it ends "cancelled" without running.
    cancelled: bool = False
    #: The claim is still being stored: the job is prepared (its task and app found), then runs
    #: only if ``go()`` returns true; nothing observable happens before.
    go: t.Callable[[], bool] | None = None


def mark_lost(
    backend: Backend,
    job_id: str,
    how: str,
    *,
    app: Flask | None = None,
    attempt: int | None = None,
    error: dict[str, str] | None = None,
) -> bool:
    """End a claimed job whose worker is gone: "cancelled" if that was asked, else "failed"
    (``how`` says what happened, in its error message).

    A backend calls this when it sees a worker process die, or once it has stopped one by force
    (:meth:`Backend.terminate <flask_longtask.backends.Backend.terminate>`). ``app``: the app the
    job belongs to, when the caller knows it: its settings apply, and the end signal is sent with
    it as sender, in its app context. ``attempt``: only if this attempt still runs. ``error``:
    what it fails with instead of a ``WorkerLostError`` (an ``OutcomeNotStoredError``'s,
    :func:`~flask_longtask.ending.outcome_not_stored`). Returns whether this call ended the job.
    """
    if app is None:
        return JobStore(backend).mark_lost(job_id, how, attempt=attempt, error=error)
    with app.app_context():
        return _store_for(backend, app).mark_lost(job_id, how, app=app, attempt=attempt, error=error)


def _store_for(backend: Backend, app: Flask) -> JobStore:
    state = app.extensions.get("longtask")
    return state.store if state is not None and state.backend is backend else JobStore.from_config(backend, app.config)


def execute(
    backend: Backend,
    job_id: str,
    *,
    task: Task[..., t.Any] | None = None,
    app: Flask | None = None,
    handoff: Handoff | None = None,
) -> JobStatus | None:
    """Run job ``job_id`` here and now, if nobody else has; return its final status.

    ``task`` and ``app`` are the live objects when the job runs in the process that submitted
    it; otherwise they are found by name (importing the task's module if needed). Returns
    ``None`` when the job was not run here: unknown, already claimed, or already ended (or,
    handed over, its ``go()`` said no).

    Without ``handoff``, the worker claims the job and reads what it needs in one round trip.
    With one, the job was claimed for this worker by whoever handed it over (see
    :class:`Handoff`): a cancel from then on finds it claimed, and the ticker's first look, the
    forced stop and the end's atomic check see to it.
    """
    if handoff is None:
        # Claim the job and read what it needs in one round trip: only the winner of the claim
        # runs it. A cancel that lands after the read is seen by the running job
        # (is_cancel_requested, and atomically when it ends) instead.
        claim = claim_value()
        started = claim["at"]
        won, (record, request, flag) = backend.claim_and_get(
            keys.claim(job_id), claim, JobStore(backend).claim_expire, keys.to_run(job_id)
        )
        if isinstance(record, Exception):  # (read leniently: see below)
            _log.error("Job %s cannot run: its record cannot be read: %s", job_id, record)
        if not won or not is_runnable(record):
            return None  # someone else has it, or it is unknown (expired, purged) or over
        cancelled, go = flag is not MISSING, None
        if isinstance(flag, Exception):  # (a refused value, returned as its error: see below)
            request = flag
    else:
        started, record, request = handoff.started, handoff.record, handoff.request
        cancelled, go = handoff.cancelled, handoff.go
    failure: Exception | None = None
    try:
        if isinstance(request, Exception):  # a backend that reads leniently returns a value it
            raise request  # refused (TamperedValueError) as its error: the job fails with it
        if request is not None and request is not MISSING:
            task, app = _task_and_app(request, task, app)
    except Exception as exc:
        failure = exc
    if go is not None and not go():
        return None
    try:
        if failure is not None:
            raise failure
        if request is None:  # too large to hand over inline
            request = backend.get(keys.request(job_id))
        if request is MISSING:
            raise LookupError("the job's request record is missing (expired or deleted)")
        task, app = _task_and_app(request, task, app)
    except Exception as exc:
        plain = JobStore(backend)
        error = error_record(exc)
        Patience(plain, job_id)(
            lambda: plain.finish(record, JobStatus.FAILED, app=None, error=error),
            attempt_of(record),
            f"failed: {error['type']}",
        )
        return JobStatus.FAILED

    store = _store_for(backend, app)
    # Claimed: readers see the job "running" from now (the claim says since when); its record
    # is not rewritten until it ends. The ticker writes its first heartbeat one progress
    # interval from now, so a short job costs no write for its start but the claim.
    ctx = JobContext(job_id, app, store, {**record, "started": started})
    _ticker.add(ctx)
    with app.app_context():
        signals.send(signals.job_started, app, job=store.job(job_id))
        patiently = Patience(store, job_id)
        if cancelled:
            ended = ctx._close()
            patiently(lambda: store.finish(ended, JobStatus.CANCELLED, app=app), attempt_of(ended), "cancelled")
            return JobStatus.CANCELLED
        try:
            args, kwargs = backend.loads(request["args"])
        except Exception as exc:
            err = error_record(exc, message=f"The job's arguments could not be deserialised here: {exc}")
            ended = ctx._close()
            patiently(lambda: store.finish(ended, JobStatus.FAILED, app=app, error=err), attempt_of(ended), "failed")
            return JobStatus.FAILED
        return _run(ctx, task, app, args, kwargs, patiently)


def is_runnable(record: t.Any) -> bool:
    """Whether a job whose record this is, just claimed, is to run: it exists and is queued."""
    return isinstance(record, dict) and record.get("status") == JobStatus.QUEUED.value


def _task_and_app(
    request: dict[str, t.Any], task: Task[..., t.Any] | None, app: Flask | None
) -> tuple[Task[..., t.Any], Flask]:
    if task is None:
        from .task import lookup_task

        task = lookup_task(request["task"], request.get("module"), request.get("script"))
    if app is None:
        app = task.longtask._app_for(request["app"])
    return task, app


def _retry(
    task: Task[..., t.Any], record: dict[str, t.Any], ctx: JobContext, failure: BaseException | None
) -> float | None:
    """Seconds before the next attempt, if this one is to be retried: it raised one of the
    task's ``retry_on`` (an ``Exception``: not ``SystemExit`` or ``KeyboardInterrupt``), or ran
    past its time limit and ``retry_on`` names ``TimeLimitExceeded``; it was not cancelled; and
    the task allows another attempt; its coroutine, if any, is not left running (see
    :func:`~flask_longtask.coroutines.run_job`): two attempts never run at once."""
    attempt = attempt_of(record)
    if attempt > retries_of(record) or ctx._abandoned:  # (allowed at submit; no attempt while one runs)
        return None
    if ctx._limited:
        retried = TimeLimitExceeded in task.retry_on and (failure is None or isinstance(failure, Exception))
    else:
        retried = (
            not ctx._cancelled
            and isinstance(failure, Exception)
            and isinstance(failure, task.retry_on)
            and not isinstance(failure, TimeLimitExceeded)
        )
    return retry_delay(task.retry_backoff, attempt) if retried else None


def _run(
    ctx: JobContext, task: Task[..., t.Any], app: Flask, args: t.Any, kwargs: t.Any, patiently: Patience
) -> JobStatus:
    store = t.cast(JobStore, ctx._store)
    token = _current.set(ctx)
    failure: BaseException | None = None
    value: t.Any = None
    try:
        if task.is_coroutine:  # on this process's event loop, this thread waiting (see .coroutines)
            value = coroutines.run_job(ctx, task.func, args, kwargs, store.cancel_grace)
        else:
            coroutines.refuse_coroutine(value := task.func(*args, **kwargs), task.func)
    except BaseException as exc:  # SystemExit, KeyboardInterrupt too: record them, then re-raise
        failure = exc
    finally:
        _current.reset(token)
        record = ctx._close()
    # From here on, each write is tried again while storage is away (see Patience).
    attempt = attempt_of(record)
    returned = "it returned" if failure is None else f"it raised {type(failure).__name__}"
    patiently(lambda: ctx._flush(final=True), attempt, returned)
    # Unless it was cancelled: a cancel requested while it ran wins over its outcome, checked
    # atomically with the end.
    ended: JobStatus | None
    delay = _retry(task, record, ctx, failure)
    if delay is not None:
        error = time_limit_error(ctx._limit) if ctx._limited else error_record(t.cast(BaseException, failure))
        retried = patiently(
            lambda: store.retry(record, error, delay, app=app, limited=ctx._limited), attempt, "to be retried"
        )
        if retried:
            request = JobRequest(record["id"], task.name, task, app)
            try:
                patiently(lambda: store.backend.enqueue_after(request, delay), attempt + 1, "queued for its retry")
                return JobStatus.QUEUED
            except Exception:  # (the broker is away): nothing would run it again, so it ends here
                _log.exception("Job %s could not be queued for its retry; it fails.", record["id"])
                # Its next attempt is ended (this one was, by the retry), as the record now says.
                queued = patiently(lambda: store.backend.get(keys.job(record["id"])), attempt + 1, "failed")
                ended = (
                    None
                    if queued is MISSING
                    else patiently(
                        lambda: store.finish(queued, JobStatus.FAILED, app=app, error=error), attempt + 1, "failed"
                    )
                )
        else:
            ended = None if retried is None else JobStatus.CANCELLED
    else:
        status, result, err, how = outcome(ctx, store, failure, value)
        memo_expire = None
        if status is JobStatus.SUCCEEDED:
            memo_expire = task.expire if task.expire is not None else store.result_expire
        plain = status is JobStatus.CANCELLED or ctx._limited  # (no cancel to check for)
        ended = patiently(
            lambda: store.finish(
                record,
                status,
                app=app,
                result=result,
                value=value,
                error=err,
                memo_expire=memo_expire,
                unless_cancelled=not plain,
            ),
            attempt,
            how,
        )
    if ended is None:
        _log.warning("Job %s returned, but it had already been ended (lost?): its outcome was dropped.", record["id"])
    status = ended or JobStatus(store.read_record(record["id"])["status"])
    if failure is not None and not isinstance(failure, Exception):
        raise failure
    return status
