"""Job records over a backend's storage: the one copy of the job semantics.

Keys (a backend may prefix them):

===================  =================================================================
``job:<id>``         the record: id, task, app, status, timestamps, error, memo key
``request:<id>``     what the worker needs: task name, app name, serialised arguments
``progress:<id>``    ``{"seq": n, "value": bytes}``, the latest progress value
``result:<id>``      the serialised return value of a succeeded job
``cancel:<id>``      present once cancellation was requested
``claim:<id>``       ``{"by": owner, "at": time}``, taken atomically by whoever moves the job
                     out of "queued": a worker (the job reads "running" from then on) or
                     ``"cancel"``
``end:<id>``         taken atomically by whoever moves the job to its final status
``alive:<id>``       heartbeat of a running job; expires when its worker is gone
``inflight:<key>``   the queued or running job of a memo key (single-flight)
``memo:<key>``       the succeeded job whose result answers a memo key
``memo-gen:<task>``  a token mixed into memo keys; replaced by ``clear_cache``
===================  =================================================================
"""

from __future__ import annotations

import logging
import time
import traceback
import typing as t

from flask import current_app, has_app_context

from . import signals
from .backends.base import MISSING, Backend
from .exceptions import JobNotFoundError
from .job import Job, JobStatus

if t.TYPE_CHECKING:  # pragma: no cover
    from flask import Flask

_log = logging.getLogger(__name__)
_ACTIVE = (JobStatus.QUEUED.value, JobStatus.RUNNING.value)
#: Seconds after which an end claim whose job still looks active is taken as abandoned.
_STALE_END = 5.0


def _app_or_current(app: Flask | None) -> Flask | None:
    if app is None and has_app_context():
        return t.cast("Flask", current_app._get_current_object())  # type: ignore[attr-defined]
    return app


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
        result_expire: float = 86400,
        cancel_grace: float = 0.5,
        heartbeat_timeout: float = 30.0,
        progress_interval: float = 0.05,
    ) -> None:
        self.backend = backend
        self.result_expire = result_expire
        self.cancel_grace = cancel_grace
        self.heartbeat_timeout = heartbeat_timeout
        self.progress_interval = progress_interval

    @classmethod
    def from_config(cls, backend: Backend, config: t.Mapping[str, t.Any]) -> JobStore:
        return cls(
            backend,
            result_expire=float(config["LONGTASK_RESULT_EXPIRE"]),
            cancel_grace=float(config["LONGTASK_CANCEL_GRACE"]),
            heartbeat_timeout=float(config["LONGTASK_HEARTBEAT_TIMEOUT"]),
            progress_interval=float(config["LONGTASK_PROGRESS_INTERVAL"]),
        )

    def job(self, job_id: str) -> Job[t.Any]:
        return Job(self, job_id)

    # -- reads ----------------------------------------------------------------------------------

    def read_record(self, job_id: str) -> dict[str, t.Any]:
        """The job's record, "running" from the moment a worker claimed it.

        A running job whose worker has sent no heartbeat for ``heartbeat_timeout`` seconds (none
        at all since it started, or none since the last one expired) is ended here as lost.
        """
        record, claim, alive = self.backend.get_many([f"job:{job_id}", f"claim:{job_id}", f"alive:{job_id}"])
        if record is MISSING:
            raise JobNotFoundError(job_id)
        if record["status"] == JobStatus.QUEUED.value and isinstance(claim, dict) and claim["by"] != "cancel":
            # Claimed by a worker, which announces it within a progress interval (worker.py).
            record = {**record, "status": JobStatus.RUNNING.value, "started": claim["at"]}
        if (
            record["status"] == JobStatus.RUNNING.value
            and alive is MISSING
            and time.time() - (record["started"] or 0.0) > self.heartbeat_timeout
        ):
            self.mark_lost(job_id, f"its worker sent no heartbeat for {self.heartbeat_timeout:g} seconds")
            record = self.backend.get(f"job:{job_id}")
            if record is MISSING:  # pragma: no cover - expired in between
                raise JobNotFoundError(job_id)
        return t.cast("dict[str, t.Any]", record)

    def read_progress(self, job_id: str) -> tuple[int, t.Any]:
        """``(sequence number, value)`` of the latest progress; ``(0, None)`` before the first."""
        stored = self.backend.get(f"progress:{job_id}")
        if stored is MISSING:
            if self.backend.get(f"job:{job_id}") is MISSING:
                raise JobNotFoundError(job_id)
            return 0, None
        return stored["seq"], self.backend.loads(stored["value"])

    def read_result(self, job_id: str) -> t.Any:
        stored = self.backend.get(f"result:{job_id}")
        if stored is MISSING:
            raise JobNotFoundError(job_id)
        return self.backend.loads(stored)

    def is_cancel_requested(self, job_id: str) -> bool:
        return self.backend.get(f"cancel:{job_id}") is not MISSING

    # -- transitions ----------------------------------------------------------------------------

    def create(self, job_id: str, request: dict[str, t.Any], memo_key: str | None, owner: str | None = None) -> None:
        """Write a new queued job: its request first, so a worker never finds a bare record.

        ``request`` holds ``task`` and ``module`` (the task's name and defining module), ``app``
        (the app's import name) and ``args`` (the serialised ``(args, kwargs)``).
        """
        # No expiry while the job waits or runs, like its record: a long queue must not lose the
        # arguments. finish() deletes it.
        record = {
            "id": job_id,
            "task": request["task"],
            "app": request["app"],
            "status": JobStatus.QUEUED.value,
            "created": time.time(),
            "started": None,
            "finished": None,
            "error": None,
            "memo_key": memo_key,
            "owner": owner,
            "expire": self.result_expire,  # the submitter's setting governs, wherever it ends
        }
        with self.backend.batch():
            self.backend.set(f"request:{job_id}", request)
            self.backend.set(f"job:{job_id}", record)

    def discard(self, job_id: str, memo_key: str | None) -> None:
        """Remove a job that could not be queued, as if it had never been submitted."""
        for key in (f"job:{job_id}", f"request:{job_id}"):
            self.backend.delete(key)
        if memo_key is not None:
            self._release_inflight(memo_key, job_id)

    def claim(self, job_id: str, owner: str, *, at: float | None = None) -> bool:
        """Atomically take the job out of "queued"; only one caller ever wins.

        A worker's claim (any ``owner`` but ``"cancel"``) makes the job read as running from
        ``at`` on, before :meth:`start` rewrites its record.
        """
        claim = {"by": owner, "at": time.time() if at is None else at}
        return self.backend.add(f"claim:{job_id}", claim, self.result_expire)

    def start(self, record: dict[str, t.Any]) -> dict[str, t.Any]:
        """Write a claimed job's record as running (``record["started"]`` set) and its first heartbeat."""
        running = {**record, "status": JobStatus.RUNNING.value, "started": record.get("started") or time.time()}
        with self.backend.batch():
            self.beat(record["id"])
            self.backend.set(f"job:{record['id']}", running)
        return running

    def beat(self, job_id: str) -> None:
        self.backend.set(f"alive:{job_id}", time.time(), self.heartbeat_timeout)

    def write_progress(self, job_id: str, seq: int, value: bytes) -> None:
        self.backend.set(f"progress:{job_id}", {"seq": seq, "value": value}, self.result_expire)

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
    ) -> bool:
        """Move a job to its final status, once; return whether this call did it.

        Sends the matching signal with ``app`` (default: the current app, if any) as sender.

        The result is stored before the record says "succeeded", so a reader that sees the
        status can always read the value. Then the memo entry, then single-flight is released.
        """
        job_id = record["id"]
        memo_key = record.get("memo_key")
        expire = record.get("expire", self.result_expire)
        if status is JobStatus.SUCCEEDED and memo_key is not None and memo_expire is not None:
            expire = max(expire, memo_expire)
        with self.backend.batch():
            if not self.backend.add(f"end:{job_id}", time.time(), self.result_expire):
                return False
            self._write_end(record, status, expire, result=result, error=error, memo_expire=memo_expire)
        self._signal_end(job_id, status, app, value=value, error=error)
        return True

    def _write_end(
        self,
        record: dict[str, t.Any],
        status: JobStatus,
        expire: float,
        *,
        result: bytes | None = None,
        error: dict[str, str] | None = None,
        memo_expire: float | None = None,
    ) -> None:
        job_id, memo_key = record["id"], record.get("memo_key")
        if status is JobStatus.SUCCEEDED:
            self.backend.set(f"result:{job_id}", result, expire)
        final = {**record, "status": status.value, "finished": time.time(), "error": error}
        self.backend.set(f"job:{job_id}", final, expire)
        if memo_key is not None:
            if status is JobStatus.SUCCEEDED:
                self.backend.set(f"memo:{memo_key}", job_id, memo_expire)
            self._release_inflight(memo_key, job_id)
        self.backend.delete(f"request:{job_id}")

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
        self.backend.set(f"cancel:{job_id}", time.time(), self.result_expire)
        if self.claim(job_id, "cancel"):
            # Nobody runs it, and now nobody will: a worker's claim fails and it skips the job.
            self.finish(record, JobStatus.CANCELLED, app=app)
        else:
            self.backend.terminate(job_id, self.cancel_grace)

    def mark_lost(self, job_id: str, how: str, *, app: Flask | None = None) -> bool:
        """End a claimed job whose worker is gone: "cancelled" if that was asked, else "failed".

        Backends call this when they see a worker process die; readers call it when a running
        job's heartbeat expires. Returns whether this call ended the job.
        """
        record = self.backend.get(f"job:{job_id}")
        if record is MISSING or record["status"] not in _ACTIVE:
            return False
        if self.is_cancel_requested(job_id):
            status, error = JobStatus.CANCELLED, None
        else:
            status = JobStatus.FAILED
            error = {"type": "WorkerLostError", "message": f"The worker running this job died: {how}.", "traceback": ""}
            _log.warning("Job %s (%s) lost: %s", job_id, record["task"], how)
        if self.finish(record, status, app=app, error=error):
            return True
        # Someone took the end claim but the record still says active: on a store without
        # transactions (Redis) the process ending the job died half-way through finish(). Its
        # worker is gone, so once the claim is a few seconds old, write the end ourselves.
        claimed = self.backend.get(f"end:{job_id}")
        record = self.backend.get(f"job:{job_id}")
        if isinstance(claimed, float) and time.time() - claimed > _STALE_END and record is not MISSING:
            if record["status"] in _ACTIVE:
                self._write_end(record, status, record.get("expire", self.result_expire), error=error)
                self._signal_end(job_id, status, app, error=error)
                return True
        return False

    # -- memoization ----------------------------------------------------------------------------

    def memo_generation(self, task_name: str) -> tuple[t.Any, t.Any]:
        return self.backend.get("memo-gen:"), self.backend.get(f"memo-gen:{task_name}")

    def clear_memo(self, task_name: str | None) -> None:
        self.backend.set(f"memo-gen:{task_name or ''}", time.time_ns())

    def find_memo(self, memo_key: str) -> Job[t.Any] | None:
        """The succeeded job answering ``memo_key``, if its result is still stored."""
        job_id = self.backend.get(f"memo:{memo_key}")
        if job_id is MISSING:
            return None
        record = self.backend.get(f"job:{job_id}")
        if record is MISSING or record["status"] != JobStatus.SUCCEEDED.value:
            return None
        return self.job(job_id)

    def join_inflight(self, memo_key: str, job_id: str) -> Job[t.Any] | None:
        """Register ``job_id`` as the in-flight job of ``memo_key``, or return the one already there."""
        for _ in range(10):
            if self.backend.add(f"inflight:{memo_key}", job_id):
                return None
            other = self.backend.get(f"inflight:{memo_key}")
            if other is MISSING:
                continue
            try:
                record = self.read_record(other)  # ends it here if its worker is gone
            except JobNotFoundError:
                record = None
            if record is not None and (
                record["status"] == JobStatus.SUCCEEDED.value
                or (record["status"] in _ACTIVE and not self.is_cancel_requested(other))
            ):
                return self.job(other)
            # A job that is being cancelled, or a leftover from one that ended without
            # releasing the key: a new submit must not join it, so take its place.
            self._release_inflight(memo_key, other)
        raise RuntimeError(f"Could not register memo key {memo_key!r}: the backend's add() is not atomic.")

    def _release_inflight(self, memo_key: str, job_id: str) -> None:
        self.backend.delete_if(f"inflight:{memo_key}", job_id)
