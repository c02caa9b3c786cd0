"""How a job that ran ends: :func:`outcome` says how, and :class:`Patience` writes it while
storage may be away for a moment.

A worker that has run a job writes its last progress and its end (or its retry) through a
:class:`Patience`: on one of the backend's
:attr:`~flask_longtask.backends.Backend.transient_errors` (a Redis restart), each write is
tried again for up to ``LONGTASK_HEARTBEAT_TIMEOUT`` seconds, then
:class:`~flask_longtask.OutcomeNotStoredError` is raised, for the backend to record once storage
is back (the Celery backend: ``flask_longtask/backends/_celery_recovery.py``; docs/internals.md,
"Ends that cannot be written"). A backend without transient errors writes as before: once.
"""

from __future__ import annotations

import logging
import time
import typing as t

from .attempts import time_limit_error
from .exceptions import OutcomeNotStoredError
from .job import JobStatus
from .store import error_record

if t.TYPE_CHECKING:  # pragma: no cover
    from .store import JobStore
    from .worker import JobContext

_log = logging.getLogger("flask_longtask.worker")  # (what a worker logs, under its name)
_T = t.TypeVar("_T")


def outcome_not_stored(exc: OutcomeNotStoredError) -> dict[str, str]:
    """The stored error of a job whose worker could not store its outcome."""
    return {"type": "OutcomeNotStoredError", "message": exc.message, "traceback": ""}


class Patience:
    """Writes the end of a job that ran: while the backend's storage is away (one of its
    :attr:`~flask_longtask.backends.Backend.transient_errors`), each write is tried again, with
    pauses from 50 ms up to 0.5 s, until ``heartbeat_timeout`` seconds have passed since the
    first failure (readers may take the job for lost after that); then it raises
    :class:`OutcomeNotStoredError`, and whoever catches it records that once storage is back."""

    def __init__(self, store: JobStore, job_id: str) -> None:
        self.store = store
        self.job_id = job_id
        self.errors = store.backend.transient_errors
        self._deadline: float | None = None

    def __call__(self, write: t.Callable[[], _T], attempt: int, outcome: str) -> _T:
        """``write()``, tried again while storage is away; ``attempt`` and ``outcome`` (how the
        job ended, in words) are what the error says if it never gets through."""
        pause = 0.05
        while True:
            try:
                return write()
            except self.errors as exc:
                now = time.monotonic()
                patience = self.store.heartbeat_timeout
                if self._deadline is None:
                    self._deadline = now + patience
                    _log.warning(
                        "Job %s could not write its end (%s: %s); trying again for up to %g s.",
                        self.job_id,
                        type(exc).__name__,
                        exc,
                        patience,
                    )
                if now >= self._deadline:
                    message = (
                        f"The job ran to its end ({outcome}), but its outcome could not be stored:"
                        f" {type(exc).__name__}: {exc} (tried for {patience:g} s)."
                    )
                    _log.error("Job %s gives its outcome up: %s", self.job_id, message)
                    raise OutcomeNotStoredError(self.job_id, attempt, message) from exc
                time.sleep(min(pause, self._deadline - now))
                pause = min(pause * 2, 0.5)


def outcome(
    ctx: JobContext, store: JobStore, failure: BaseException | None, value: t.Any
) -> tuple[JobStatus, bytes | None, dict[str, str] | None, str]:
    """How a job that returned (or raised) ends, unless retried: its status, its serialised
    result, its error, and that in words (for an error that says it could not be stored)."""
    if ctx._limited:
        err = time_limit_error(ctx._limit)
        if ctx._abandoned:  # (a coroutine still running: not retried, see worker._retry)
            err["message"] += f" {ctx._abandoned} A job is not retried while an attempt of it may still run."
        return JobStatus.FAILED, None, err, "failed: TimeLimitExceeded"
    if ctx._cancelled:
        return JobStatus.CANCELLED, None, None, "cancelled"
    if failure is not None:
        err = error_record(failure)
        return JobStatus.FAILED, None, err, f"failed: {err['type']}"
    if ctx._error is not None:
        err = error_record(ctx._error, message=f"The job's last progress value could not be serialised: {ctx._error}")
        return JobStatus.FAILED, None, err, "failed: its last progress could not be serialised"
    try:
        data = store.backend.dumps(value)
    except Exception as exc:
        err = error_record(exc, message=f"The job's result could not be serialised: {exc}")
        return JobStatus.FAILED, None, err, "failed: its result could not be serialised"
    return JobStatus.SUCCEEDED, data, None, "succeeded"


__all__ = ["Patience", "outcome", "outcome_not_stored"]
