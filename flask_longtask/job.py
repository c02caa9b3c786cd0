"""The job handle and its status."""

from __future__ import annotations

import enum
import math
import time
import typing as t
from datetime import datetime, timezone

from .attempts import attempt_of, retries_of
from .backends.base import MISSING
from .exceptions import JobCancelledError, JobFailedError, JobNotFoundError, JobTimeoutError

if t.TYPE_CHECKING:  # pragma: no cover
    from .store import JobStore

R = t.TypeVar("R")


class JobStatus(str, enum.Enum):
    """Where a job is in its lifecycle: queued -> running -> succeeded | failed | cancelled."""

    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def is_finished(self) -> bool:
        """Whether the job has ended (succeeded, failed or cancelled)."""
        return self in _FINISHED

    def __str__(self) -> str:
        return self.value


_FINISHED = frozenset({JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED})
#: The least ``elapsed`` of a look after the first (``0.0`` means "the first look").
_TICK = 1e-9


def _when(stamp: float | None) -> datetime | None:
    return None if stamp is None else datetime.fromtimestamp(stamp, timezone.utc)


class Job(t.Generic[R]):
    """A handle on one submitted job; every read asks the backend, so it is always current.

    Get one from :meth:`Task.submit <flask_longtask.task.Task.submit>` or
    :meth:`LongTask.get_job <flask_longtask.LongTask.get_job>`. Handles are cheap and hold no
    state but the id: any process sharing the backend sees the same job.
    """

    __slots__ = ("id", "_store")

    def __init__(self, store: JobStore, job_id: str) -> None:
        #: The job's id: 32 hex digits, the submit time (ms) then 80 random bits (unguessable).
        self.id: str = job_id
        self._store = store

    def __repr__(self) -> str:
        return f"<Job {self.id} {self.task} {self.status.value}>"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Job) and other.id == self.id

    def __hash__(self) -> int:
        return hash(self.id)

    def _record(self) -> dict[str, t.Any]:
        return self._store.read_record(self.id)

    @property
    def task(self) -> str:
        """The name of the task this job runs."""
        return t.cast(str, self._record()["task"])

    @property
    def owner(self) -> str | None:
        """Who submitted it, as the HTTP API's owner loader said; ``None`` from Python code."""
        return t.cast("str | None", self._record().get("owner"))

    @property
    def status(self) -> JobStatus:
        """The current :class:`JobStatus`.

        :raises JobNotFoundError: the job's record has expired.
        """
        return JobStatus(self._record()["status"])

    @property
    def is_finished(self) -> bool:
        """Whether the job has ended (succeeded, failed or cancelled)."""
        return self.status.is_finished

    @property
    def is_cancel_requested(self) -> bool:
        """Whether someone asked this job to stop (it may still be running its last lines)."""
        return self._store.is_cancel_requested(self.id)

    @property
    def progress(self) -> t.Any:
        """The latest value the job passed to ``set_progress``; ``None`` before the first."""
        return self._store.read_progress(self.id)[1]

    @property
    def error(self) -> dict[str, str] | None:
        """``None``, or ``{"type", "message", "traceback"}`` for a failed job."""
        return t.cast("dict[str, str] | None", self._record().get("error"))

    @property
    def attempt(self) -> int:
        """Which attempt runs, or ran last: 1 for the first; a retried job counts on (its task's
        ``retries``)."""
        return attempt_of(self._record())

    @property
    def retries(self) -> int:
        """How many more attempts its task allowed after a failed one, when it was submitted."""
        return retries_of(self._record())

    @property
    def last_error(self) -> dict[str, str] | None:
        """The error of the attempt before, for a job that was retried (``{type, message,
        traceback}``); ``None`` before any retry."""
        error = self._record().get("last_error")
        return error if isinstance(error, dict) else None

    @property
    def time_limit(self) -> float | None:
        """Seconds it may run once started (its task's ``time_limit``, or
        ``LONGTASK_TIME_LIMIT`` when it was submitted); ``None``: no limit."""
        limit = self._record().get("time_limit")
        if isinstance(limit, (int, float)) and not isinstance(limit, bool) and 0 < limit < math.inf:
            return float(limit)
        return None

    @property
    def created_at(self) -> datetime:
        """When the job was submitted (UTC)."""
        return t.cast(datetime, _when(self._record()["created"]))

    @property
    def started_at(self) -> datetime | None:
        """When a worker started it (UTC), or ``None``."""
        return _when(self._record().get("started"))

    @property
    def finished_at(self) -> datetime | None:
        """When it ended (UTC), or ``None``."""
        return _when(self._record().get("finished"))

    def wait(self, timeout: float | None = None) -> JobStatus:
        """Block until the job has ended and return its final status.

        :param timeout: seconds to wait at most; ``None`` waits for ever.
        :raises JobTimeoutError: the job had not ended within ``timeout``.
        """
        return JobStatus(self._wait(timeout, with_result=False)[0]["status"])

    def _wait(self, timeout: float | None, *, with_result: bool) -> tuple[dict[str, t.Any], t.Any]:
        # Each look is one Backend.wait: it answers at once the first time, then whenever the
        # job may have ended (or polls); the deadline is kept here.
        start = now = time.perf_counter()
        deadline = math.inf if timeout is None else start + timeout
        elapsed = 0.0
        while True:
            left = max(deadline - now, 0.0)
            record, data = self._store.read_state(self.id, with_result=with_result, timeout=left, elapsed=elapsed)
            if JobStatus(record["status"]).is_finished:
                return record, data
            now = time.perf_counter()
            if now >= deadline:
                raise JobTimeoutError(self.id, t.cast(float, timeout))
            elapsed = max(now - start, _TICK)

    def result(self, timeout: float | None = None) -> R:
        """Wait for the job to end and return its value.

        :param timeout: seconds to wait at most; ``None`` waits for ever.
        :raises JobFailedError: the job raised; its message is the job's exception.
        :raises JobCancelledError: the job was cancelled.
        :raises JobTimeoutError: it had not ended within ``timeout``.
        :raises JobNotFoundError: its record (or result) has expired.
        """
        # The result is read with the status (it exists only once the job has succeeded).
        record, data = self._wait(timeout, with_result=True)
        status = JobStatus(record["status"])
        if status is JobStatus.SUCCEEDED:
            if data is MISSING:
                raise JobNotFoundError(self.id)
            return t.cast(R, self._store.backend.loads(data))
        if status is JobStatus.CANCELLED:
            raise JobCancelledError(self.id)
        raise JobFailedError(self.id, record.get("error") or {})

    def cancel(self) -> None:
        """Ask the job to stop; a no-op once it has ended.

        A queued job never starts. A running job sees ``current_job.is_cancel_requested``; on
        backends that can, it is stopped by force after ``LONGTASK_CANCEL_GRACE`` seconds. Either
        way it ends ``cancelled``, even if it then returns a value.
        """
        self._store.cancel(self.id)
