"""Job records over a backend's storage: the one copy of the job semantics. The key schema
(:data:`keys`, from :mod:`flask_longtask.keys`) and a job's attempts (its time limit and
retries, :mod:`flask_longtask.attempts`) are re-read here, for one import."""

from __future__ import annotations

import logging
import time
import traceback
import typing as t
from dataclasses import replace

from flask import current_app, has_app_context

from . import signals
from .attempts import (
    attempt_of,
    is_time_limit,
    retries_of,
    retry_delay,
    time_limit_error,
    time_limit_value,
)
from .backends.base import MISSING, Backend, JobEnd, JobEntry, JobRequest, NewJob, Write
from .config import DEFAULT_CONFIG
from .exceptions import JobNotFoundError
from .job import Job, JobStatus
from .keys import Keys as Keys  # (the key schema, re-exported: flask_longtask.store.keys)
from .keys import keys as keys

if t.TYPE_CHECKING:  # pragma: no cover
    from flask import Flask

_log = logging.getLogger(__name__)
_ACTIVE = (JobStatus.QUEUED.value, JobStatus.RUNNING.value)
#: Seconds a claim is kept at least (a week; longer if ``LONGTASK_RESULT_EXPIRE`` is longer).
CLAIM_EXPIRE = 7 * 24 * 3600.0
#: Seconds a submit waits for the record of the in-flight job it would join (see
#: ``Store.join_inflight``) before it takes that job's place.
INFLIGHT_WAIT = 5.0
#: Seconds after which an end claim whose job still looks active is taken as abandoned.
_STALE_END = 5.0


def _app_or_current(app: Flask | None) -> Flask | None:
    if app is None and has_app_context():
        return t.cast("Flask", current_app._get_current_object())  # type: ignore[attr-defined]
    return app


def _setting(value: float | None, name: str) -> float:
    return float(DEFAULT_CONFIG[name] if value is None else value)


def error_record(exc: BaseException, *, message: str | None = None) -> dict[str, str]:
    """The stored ``{type, message, traceback}`` of an exception."""
    cls = type(exc)
    name = cls.__qualname__ if cls.__module__ == "builtins" else f"{cls.__module__}.{cls.__qualname__}"
    return {
        "type": name,
        "message": str(exc) if message is None else message,
        "traceback": "".join(traceback.format_exception(exc)),
    }


class JobStore:
    """Reads and writes job records on one backend, with one app's settings."""

    def __init__(
        self,
        backend: Backend,
        *,
        result_expire: float | None = None,
        cancel_grace: float | None = None,
        heartbeat_timeout: float | None = None,
        progress_interval: float | None = None,
        time_limit: float | None = None,
    ) -> None:
        """A store on ``backend``; a setting left out takes its ``LONGTASK_*`` default
        (``time_limit``: ``None`` is no limit, the default's default)."""
        self.backend = backend
        self.result_expire = _setting(result_expire, "LONGTASK_RESULT_EXPIRE")
        self.cancel_grace = _setting(cancel_grace, "LONGTASK_CANCEL_GRACE")
        self.heartbeat_timeout = _setting(heartbeat_timeout, "LONGTASK_HEARTBEAT_TIMEOUT")
        self.progress_interval = _setting(progress_interval, "LONGTASK_PROGRESS_INTERVAL")
        #: Seconds a job may run when its task sets no limit of its own (``None``: no limit).
        self.time_limit = time_limit_value(time_limit, "LONGTASK_TIME_LIMIT")

    @classmethod
    def from_config(cls, backend: Backend, config: t.Mapping[str, t.Any]) -> JobStore:
        """A store with an app's settings (``app.config``)."""
        return cls(
            backend,
            result_expire=config.get("LONGTASK_RESULT_EXPIRE"),
            cancel_grace=config.get("LONGTASK_CANCEL_GRACE"),
            heartbeat_timeout=config.get("LONGTASK_HEARTBEAT_TIMEOUT"),
            progress_interval=config.get("LONGTASK_PROGRESS_INTERVAL"),
            time_limit=config.get("LONGTASK_TIME_LIMIT"),
        )

    def job(self, job_id: str) -> Job[t.Any]:
        return Job(self, job_id)

    # -- reads ----------------------------------------------------------------------------------

    def read_record(self, job_id: str) -> dict[str, t.Any]:
        """The job's record, "running" from the moment a worker claimed it.

        A running job whose worker has sent no heartbeat for ``heartbeat_timeout`` seconds (none
        at all since it started, or none since the last one expired) is ended here as lost.
        """
        return self.read_state(job_id)[0]

    def read_state(
        self, job_id: str, *, with_result: bool = False, timeout: float | None = None, elapsed: float = 0.0
    ) -> tuple[dict[str, t.Any], t.Any]:
        """:meth:`read_record`, and with ``with_result`` the stored result (or :data:`MISSING`)
        in the same read: ``Job.result()`` polls this way, one round trip per look.

        With ``timeout``, this is one look of a wait (:meth:`Backend.wait`, which may block up
        to ``timeout`` seconds, ``math.inf`` included, for the job to end); ``elapsed``: seconds
        since the wait began, ``0.0`` on its first look.
        """
        names = [keys.job(job_id), keys.claim(job_id), keys.alive(job_id)]
        if with_result:
            names.append(keys.result(job_id))
        if timeout is None:
            values = self.backend.get_many(names)
        else:
            values = self.backend.wait(job_id, names, timeout=timeout, elapsed=elapsed)
        record, claim, alive, *rest = values
        data = rest[0] if rest else MISSING
        if record is MISSING:
            raise JobNotFoundError(job_id)
        if record["status"] == JobStatus.QUEUED.value and isinstance(claim, dict) and claim["by"] != "cancel":
            # Claimed by a worker: it runs (the record is rewritten only when it ends).
            record = {**record, "status": JobStatus.RUNNING.value, "started": claim["at"]}
        if (
            record["status"] == JobStatus.RUNNING.value
            and alive is MISSING
            and time.time() - (record["started"] or 0.0) > self.heartbeat_timeout
        ):
            how = f"its worker sent no heartbeat for {self.heartbeat_timeout:g} seconds"
            self.mark_lost(job_id, how, attempt=attempt_of(record))
            record = self.backend.get(keys.job(job_id))
            if record is MISSING:  # pragma: no cover - expired in between
                raise JobNotFoundError(job_id)
        return record, data

    def read_progress(self, job_id: str) -> tuple[int, t.Any]:
        """``(sequence number, value)`` of the latest progress; ``(0, None)`` before the first."""
        stored = self.backend.get(keys.progress(job_id))
        if stored is MISSING:
            if self.backend.get(keys.job(job_id)) is MISSING:
                raise JobNotFoundError(job_id)
            return 0, None
        return stored["seq"], self.backend.loads(stored["value"])

    def read_result(self, job_id: str) -> t.Any:
        stored = self.backend.get(keys.result(job_id))
        if stored is MISSING:
            raise JobNotFoundError(job_id)
        return self.backend.loads(stored)

    def is_cancel_requested(self, job_id: str) -> bool:
        return self.backend.get(keys.cancel(job_id)) is not MISSING

    def _cancelled_by_someone(self, job_id: str) -> bool:
        """Whether a cancel was asked for: a time limit's mark is not one (the job may be
        retried, and stays the one in flight for its memo key)."""
        flag = self.backend.get(keys.cancel(job_id))
        return flag is not MISSING and not is_time_limit(flag)

    # -- transitions ----------------------------------------------------------------------------

    def new_job(
        self,
        request: JobRequest,
        arguments: dict[str, t.Any],
        memo_key: str | None,
        owner: str | None = None,
        *,
        announce: t.Callable[[], None],
        time_limit: float | None = None,
        retries: int = 0,
        shown: str | None = None,
    ) -> NewJob:
        """A new queued job, for :meth:`Backend.store_and_enqueue`.

        ``arguments`` holds ``task`` and ``module`` (the task's name and defining module),
        ``app`` (the app's import name) and ``args`` (the serialised ``(args, kwargs)``).
        ``announce`` sends ``job_submitted``. ``time_limit``: seconds it may run once started
        (``None``: none), as :func:`time_limit_value` gives it. ``shown``: the arguments as the
        dashboard shows them (kept in the record, which outlives ``args``).
        """
        record = self._queued_record(request.job_id, arguments, memo_key, owner, time_limit, retries)
        if request.task.is_coroutine:  # (a pool host routes it without importing the task)
            record["coroutine"] = True
        if shown is not None:
            record["shown"] = shown
        writes = self._create_writes(request.job_id, arguments, record)
        return NewJob(request, record, arguments, writes, announce)

    def create(self, job_id: str, arguments: dict[str, t.Any], memo_key: str | None, owner: str | None = None) -> None:
        """Write a new queued job without queueing it (see :meth:`new_job`), in one batch."""
        self.backend.write_all(
            self._create_writes(job_id, arguments, self._queued_record(job_id, arguments, memo_key, owner))
        )

    def _queued_record(
        self,
        job_id: str,
        arguments: dict[str, t.Any],
        memo_key: str | None,
        owner: str | None,
        time_limit: float | None = None,
        retries: int = 0,
    ) -> dict[str, t.Any]:
        return {
            "id": job_id,
            "task": arguments["task"],
            "app": arguments["app"],
            "status": JobStatus.QUEUED.value,
            "created": time.time(),
            "started": None,
            "finished": None,
            "error": None,
            "memo_key": memo_key,
            "owner": owner,
            "expire": self.result_expire,  # the submitter's setting governs, wherever it ends
            "time_limit": time_limit,
            "attempt": 1,  # the attempt that runs, or ran last
            "retries": retries,  # how many more attempts its task allows after a failed one
        }

    @staticmethod
    def _create_writes(job_id: str, arguments: dict[str, t.Any], record: dict[str, t.Any]) -> tuple[Write, ...]:
        # The request first, so a worker never finds a bare record. No expiry while the job waits
        # or runs, like its record: a long queue must not lose the arguments. finish() deletes it.
        return (("set", keys.request(job_id), arguments, None), ("set", keys.job(job_id), record, None))

    def discard(self, job_id: str, memo_key: str | None) -> None:
        """Remove a job that could not be queued, as if it had never been submitted."""
        for key in (keys.job(job_id), keys.request(job_id)):
            self.backend.delete(key)
        self.backend.forget(job_id)  # (its listing entry, where the backend wrote one)
        if memo_key is not None:
            self._release_inflight(memo_key, job_id)

    def claim(self, job_id: str, owner: str, *, at: float | None = None) -> bool:
        """Atomically take the job out of "queued"; only one caller ever wins.

        A worker's claim (any ``owner`` but ``"cancel"``) makes the job read as running from
        ``at`` on; its stored record keeps saying "queued" until the job ends.
        """
        claim = {"by": owner, "at": time.time() if at is None else at}
        return self.backend.add(keys.claim(job_id), claim, self.claim_expire)

    @property
    def claim_expire(self) -> float:
        """Claims outlive the records they guard: a job must never be claimable twice."""
        return max(CLAIM_EXPIRE, self.result_expire)

    def beat(self, job_id: str) -> None:
        self.backend.set(keys.alive(job_id), time.time(), self.heartbeat_timeout)

    def write_progress(self, job_id: str, seq: int, value: bytes) -> None:
        self.backend.set(keys.progress(job_id), {"seq": seq, "value": value}, self.result_expire)

    def finish(
        self,
        record: dict[str, t.Any],
        status: JobStatus,
        *,
        app: Flask | None,
        result: bytes | None = None,
        value: t.Any = None,
        error: dict[str, str] | None = None,
        memo_expire: float | None = None,
        unless_cancelled: bool = False,
    ) -> JobStatus | None:
        """Move a job to its final status, once; return that status, or ``None`` if the job had
        already been ended by someone else, or its attempt by a retry (``record`` was read before
        it: the job is queued for its next attempt, which is not ended here).

        With ``unless_cancelled``, a job whose cancellation was requested ends "cancelled"
        instead; the check is atomic with the end (a worker ends a job that returned this way).
        Sends the matching signal with ``app`` (default: the current app, if any) as sender.

        The end claim (of the attempt ``record`` says runs), the result, the record, the memo
        entry and the release of single-flight are written in one step (:meth:`Backend.end_job`):
        a reader that sees the status can always read the value.
        """
        job_id, now = record["id"], time.time()
        writes = self._end_writes(record, status, result=result, error=error, memo_expire=memo_expire)
        kept = next(expire for _, key, _, expire in writes if key == keys.job(job_id))  # (the record's)
        done = self.backend.end_job(
            JobEnd(
                job_id,
                status.value,
                keys.end(job_id, attempt_of(record)),
                now,
                self.result_expire,
                writes,
                unless=keys.cancel(job_id) if unless_cancelled else None,
                otherwise=self._end_writes(record, JobStatus.CANCELLED) if unless_cancelled else (),
                entry=replace(JobEntry.of(record), status=status.value, expire=kept, finished=now),
            )
        )
        if done is None:
            return None
        if not done:
            status, value, error = JobStatus.CANCELLED, None, None
        self._signal_end(job_id, status, app, value=value, error=error)
        return status

    def _end_writes(
        self,
        record: dict[str, t.Any],
        status: JobStatus,
        *,
        result: bytes | None = None,
        error: dict[str, str] | None = None,
        memo_expire: float | None = None,
    ) -> tuple[Write, ...]:
        """The writes that end a job: result, final record, memo entry, single-flight, request."""
        job_id, memo_key = record["id"], record.get("memo_key")
        expire = record.get("expire", self.result_expire)
        if status is JobStatus.SUCCEEDED and memo_key is not None and memo_expire is not None:
            expire = max(expire, memo_expire)
        writes: list[Write] = []
        if status is JobStatus.SUCCEEDED:
            writes.append(("set", keys.result(job_id), result, expire))
        final = {**record, "status": status.value, "finished": time.time(), "error": error}
        writes.append(("set", keys.job(job_id), final, expire))
        if memo_key is not None:
            if status is JobStatus.SUCCEEDED:
                writes.append(("set", keys.memo(memo_key), job_id, memo_expire))
            writes.append(("delete_if", keys.inflight(memo_key), job_id, None))
        writes.append(("delete", keys.request(job_id), None, None))
        return tuple(writes)

    def _signal_end(
        self, job_id: str, status: JobStatus, app: Flask | None, *, value: t.Any = None, error: t.Any = None
    ) -> None:
        app = _app_or_current(app)
        if app is not None:
            job = self.job(job_id)
            if status is JobStatus.SUCCEEDED:
                signals.send(signals.job_succeeded, app, job=job, result=value)
            elif status is JobStatus.FAILED:
                signals.send(signals.job_failed, app, job=job, error=error)
            else:
                signals.send(signals.job_cancelled, app, job=job)

    def cancel(self, job_id: str, *, app: Flask | None = None) -> None:
        """Request cancellation; end a queued job here, or let the running worker end it."""
        record = self.read_record(job_id)
        if record["status"] not in _ACTIVE:
            return
        self.backend.set(keys.cancel(job_id), time.time(), self.result_expire)
        if self.claim(job_id, "cancel"):
            # Nobody runs it, and now nobody will: a worker's claim fails and it skips the job.
            # Its record is read again: the attempt read above may have been retried since (the
            # job was running then), and the attempt to end is the one queued now.
            record = self.backend.get(keys.job(job_id))
            if record is not MISSING and record["status"] in _ACTIVE:
                self.finish(record, JobStatus.CANCELLED, app=app)
        else:
            self.backend.terminate(job_id, self.cancel_grace)

    def exceed_time_limit(self, job_id: str, limit: float) -> bool:
        """The running job passed its time limit (its own ticker calls this): raise its cancel
        flag, marked as the time limit's, and have the backend stop it by force after the grace
        (it then ends failed, ``TimeLimitExceeded``, see :meth:`mark_lost`). ``False`` when a
        cancel came first: its flag stays as it is (the job ends cancelled, never retried)."""
        flag = {"at": time.time(), "reason": "time_limit", "limit": limit}
        if not self.backend.add(keys.cancel(job_id), flag, self.result_expire):
            return False
        self.backend.terminate(job_id, self.cancel_grace)
        return True

    def retry(
        self, record: dict[str, t.Any], error: dict[str, str], delay: float, *, app: Flask | None, limited: bool
    ) -> bool | None:
        """Queue a job whose attempt failed with ``error`` to run again in ``delay`` seconds: its
        record says "queued" with the next attempt's number, its claim and heartbeat are gone,
        its arguments and its single-flight key stay. The caller then has the backend run it
        (:meth:`Backend.enqueue_after`).

        One atomic step that takes the failed attempt's end claim (``record``'s attempt), and
        keeps it: that attempt is over, and whoever read it before (a reader that found it lost,
        a second reader retrying it too) cannot end it, or retry it, again; the next attempt
        ends with its own claim. An attempt somebody else ended (or retried) stays so
        (``None``: queue nothing), and a job whose cancel flag is set ends cancelled instead
        (``False``). ``limited``: the attempt ran past its time limit, whose mark on the cancel
        flag is then taken down (a cancel made meanwhile replaces the mark, stays, and ends the
        next attempt before it starts).
        """
        job_id = record["id"]
        attempt = attempt_of(record) + 1
        now = time.time()
        queued = {
            **record,
            "status": JobStatus.QUEUED.value,
            "started": None,
            "attempt": attempt,
            "retry_at": now + delay,
            "last_error": error,
        }
        writes: list[Write] = [
            ("set", keys.job(job_id), queued, None),
            ("delete", keys.claim(job_id), None, None),
            ("delete", keys.alive(job_id), None, None),
        ]
        unless: str | None = keys.cancel(job_id)
        if limited:
            flag = self.backend.get(keys.cancel(job_id))
            if is_time_limit(flag):  # (a cancel that replaced the mark wins: unless stays)
                writes.append(("delete_if", keys.cancel(job_id), flag, None))
                unless = None
        done = self.backend.add_then_write(
            keys.end(job_id, attempt - 1),
            now,
            self.claim_expire,  # (like a claim: as long as the job may live on)
            writes,
            unless=unless,
            otherwise=self._end_writes(record, JobStatus.CANCELLED),
        )
        if done is None:
            return None
        if not done:
            self._signal_end(job_id, JobStatus.CANCELLED, app)
            return False
        _log.info(
            "Job %s (%s) failed (%s); attempt %d in %.3g s.", job_id, record["task"], error["type"], attempt, delay
        )
        app = _app_or_current(app)
        if app is not None:
            signals.send(signals.job_retrying, app, job=self.job(job_id), error=error, attempt=attempt)
        return True

    def _retry_time_limit(self, record: dict[str, t.Any], app: Flask | None) -> bool:
        """Retry a job stopped by force at its time limit, if its task (registered in this
        process: nothing is imported on the word of storage) retries on ``TimeLimitExceeded``
        and allows another attempt; whether it was queued again."""
        from .exceptions import TimeLimitExceeded
        from .task import registered_task

        task = registered_task(record.get("task"))
        attempt = attempt_of(record)
        if task is None or TimeLimitExceeded not in task.retry_on or attempt > retries_of(record):
            return False
        if app is None:  # (Celery's main process: the job's app, for the job_retrying signal)
            try:
                app = task.longtask._app_for(str(record.get("app")))
            except LookupError:
                app = None
        delay = retry_delay(task.retry_backoff, attempt)
        if not self.retry(record, time_limit_error(record.get("time_limit")), delay, app=app, limited=True):
            return False
        self.backend.enqueue_after(JobRequest(record["id"], task.name, task, t.cast("Flask", app)), delay)
        return True

    def mark_lost(
        self,
        job_id: str,
        how: str,
        *,
        app: Flask | None = None,
        attempt: int | None = None,
        error: dict[str, str] | None = None,
    ) -> bool:
        """End a claimed job whose worker is gone: "cancelled" if that was asked, else "failed"
        (or, stopped by force at its time limit, retry it if its task says so).

        Backends call this when they see a worker process die; readers call it when a running
        job's heartbeat expires, with the ``attempt`` they saw running: a job that has moved on
        to a later attempt since (retried, by its worker or by another reader) is not lost.
        ``error``: what it fails with, when its worker knows better than "it died" (a job whose
        outcome could not be stored); default a ``WorkerLostError`` that says ``how``.
        Returns whether this call ended (or retried) the job.
        """
        record, claim, flag = self.backend.get_many([keys.job(job_id), keys.claim(job_id), keys.cancel(job_id)])
        if record is MISSING or record["status"] not in _ACTIVE:
            return False
        if attempt is not None and attempt_of(record) != attempt:
            return False
        if record.get("started") is None and isinstance(claim, dict) and claim["by"] != "cancel":
            record = {**record, "started": claim["at"]}  # it ran from its claim
        limited = is_time_limit(flag)  # stopped by force at its time limit: that is its end
        if limited and self._retry_time_limit(record, app):
            return True
        lost = error is None
        if limited:
            error = time_limit_error(record.get("time_limit"))
        elif error is None:
            error = {"type": "WorkerLostError", "message": f"The worker running this job died: {how}.", "traceback": ""}
        ended = self.finish(record, JobStatus.FAILED, app=app, error=error, unless_cancelled=not limited)
        if ended is JobStatus.FAILED and limited:
            _log.warning("Job %s (%s) stopped by force at its time limit.", job_id, record["task"])
        elif ended is JobStatus.FAILED:
            _log.warning("Job %s (%s) %s: %s", job_id, record["task"], "lost" if lost else "failed", how)
        if ended is not None:
            return True
        if self.is_cancel_requested(job_id) and not limited:
            status, error = JobStatus.CANCELLED, None
        else:
            status = JobStatus.FAILED
        # Someone took the end claim of the attempt the record says runs, but the record still says
        # active: on a backend whose end_job() is not atomic (a custom one with the default, on a
        # store without transactions), the process ending the job died half-way through. Its
        # worker is gone, so once the claim is a few seconds old, write the end ourselves. (The
        # record is read again after the claim: a retry takes the claim of the attempt it ends
        # and moves the record on to the next attempt in one step; that attempt is not lost.)
        record = self.backend.get(keys.job(job_id))
        if record is MISSING or (attempt is not None and attempt_of(record) != attempt):
            return False
        claimed = self.backend.get(keys.end(job_id, attempt_of(record)))
        again = self.backend.get(keys.job(job_id))
        if isinstance(claimed, float) and time.time() - claimed > _STALE_END and again is not MISSING:
            if again["status"] in _ACTIVE and attempt_of(again) == attempt_of(record):
                self.backend.write_all(self._end_writes(again, status, error=error))
                self._signal_end(job_id, status, app, error=error)
                return True
        return False

    # -- memoization ----------------------------------------------------------------------------

    def memo_generation(self, task_name: str) -> tuple[t.Any, t.Any]:
        return self.backend.get(keys.memo_gen("")), self.backend.get(keys.memo_gen(task_name))

    def clear_memo(self, task_name: str | None) -> None:
        self.backend.set(keys.memo_gen(task_name or ""), time.time_ns())

    def find_memo(self, memo_key: str) -> Job[t.Any] | None:
        """The succeeded job answering ``memo_key``, if its result is still stored."""
        job_id = self.backend.get(keys.memo(memo_key))
        if job_id is MISSING:
            return None
        record = self.backend.get(keys.job(job_id))
        if record is MISSING or record["status"] != JobStatus.SUCCEEDED.value:
            return None
        return self.job(job_id)

    def join_inflight(self, memo_key: str, job_id: str) -> Job[t.Any] | None:
        """Register ``job_id`` as the in-flight job of ``memo_key``, or return the one already there."""
        for _ in range(10):
            if self.backend.add(keys.inflight(memo_key), job_id):
                return None
            other = self.backend.get(keys.inflight(memo_key))
            if other is MISSING:
                continue
            record = self._inflight_record(memo_key, other)
            if record is not None and (
                record["status"] == JobStatus.SUCCEEDED.value
                or (record["status"] in _ACTIVE and not self._cancelled_by_someone(other))
            ):
                return self.job(other)
            # A job that is being cancelled, or a leftover from one that ended without
            # releasing the key: a new submit must not join it, so take its place.
            self._release_inflight(memo_key, other)
        raise RuntimeError(f"Could not register memo key {memo_key!r}: the backend's add() is not atomic.")

    def _inflight_record(self, memo_key: str, job_id: str) -> dict[str, t.Any] | None:
        """The record of the job holding ``memo_key``'s in-flight key, or ``None`` if it has none.

        A submit registers the key before it writes the job, so a record can be missing for a
        moment (longer when that write waits for a lock): wait for it while the key still names
        that job, up to :data:`INFLIGHT_WAIT` seconds. A submitter that died between the two
        leaves a key whose record never comes; one that waited longer than that for its write
        is taken over too (the job may then run twice).
        """
        deadline = time.monotonic() + INFLIGHT_WAIT
        delay = 0.0002
        while True:
            try:
                return self.read_record(job_id)  # ends it here if its worker is gone
            except JobNotFoundError:
                pass
            if time.monotonic() >= deadline or self.backend.get(keys.inflight(memo_key)) != job_id:
                return None  # abandoned, or released by a submit that failed
            time.sleep(delay)
            delay = min(delay * 2, 0.05)

    def _release_inflight(self, memo_key: str, job_id: str) -> None:
        self.backend.delete_if(keys.inflight(memo_key), job_id)
