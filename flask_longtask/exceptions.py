"""Errors raised by Flask-LongTask. Misuse raises builtins (``TypeError``, ``RuntimeError``)."""

from __future__ import annotations

import typing as t


class LongTaskError(Exception):
    """Base class of every error about a job."""


class JobNotFoundError(LongTaskError, LookupError):
    """No job has this id: it never existed, or its record expired."""

    def __init__(self, job_id: str) -> None:
        super().__init__(f"No job with id {job_id!r} (unknown, or its record has expired).")
        self.job_id = job_id


class JobFailedError(LongTaskError):
    """The job raised, its worker died, or its result could not be stored.

    ``str(err)`` is ``"<ExceptionType>: <message>"`` of the job's own exception; ``type``,
    ``message`` and ``traceback`` (the remote one, a string) are attributes.
    """

    def __init__(self, job_id: str, error: dict[str, str]) -> None:
        self.job_id = job_id
        self.type = error.get("type", "Exception")
        self.message = error.get("message", "")
        self.traceback = error.get("traceback", "")
        super().__init__(f"{self.type}: {self.message}" if self.message else self.type)


class TimeLimitExceeded(LongTaskError):
    """What a job that ran past its time limit failed with: its ``job.error["type"]`` is
    ``"TimeLimitExceeded"``, and ``job.result()`` raises :class:`JobFailedError` with a message
    that starts with it. Name it in a task's ``retry_on`` to have such a job run again."""


class OutcomeNotStoredError(LongTaskError):
    """A worker ran a job to its end but could not store how it ended: its storage (Redis) was
    away for longer than the worker's patience (``LONGTASK_HEARTBEAT_TIMEOUT`` seconds). The job
    ends failed with this type (``job.error["type"] == "OutcomeNotStoredError"``, and a message
    that says how it had ended and why that was not stored) once the storage answers again,
    instead of being taken for a lost worker."""

    def __init__(self, job_id: str, attempt: int, message: str) -> None:
        super().__init__(message)
        self.job_id = job_id
        #: The attempt whose end was not stored (a job retried since is not this one).
        self.attempt = attempt
        self.message = message

    def __reduce__(self) -> tuple[t.Any, ...]:  # (crosses processes: a Celery pool's result)
        return type(self), (self.job_id, self.attempt, self.message)


class JobCancelledError(LongTaskError):
    """The job was cancelled, so it has no result."""

    def __init__(self, job_id: str) -> None:
        super().__init__(f"Job {job_id!r} was cancelled.")
        self.job_id = job_id


class JobTimeoutError(LongTaskError, TimeoutError):
    """The job did not finish within the time the caller was willing to wait."""

    def __init__(self, job_id: str, timeout: float) -> None:
        super().__init__(f"Job {job_id!r} did not finish within {timeout:g} seconds.")
        self.job_id = job_id
        self.timeout = timeout


class QueueFullError(LongTaskError):
    """``submit()`` was refused: ``LONGTASK_MAX_QUEUED`` jobs are already waiting to start (or
    ``submit_many()``: its jobs would make more than that)."""

    def __init__(self, queued: int, limit: int, adding: int = 1) -> None:
        more = "" if adding == 1 else f", and {adding} more would be too many"
        super().__init__(
            f"{queued} jobs are already queued{more} (LONGTASK_MAX_QUEUED = {limit});"
            " nothing was queued, try again later."
        )
        self.queued = queued
        self.limit = limit
        #: How many jobs the refused submit would have queued (``Task.submit_many``: more than one).
        self.adding = adding


class TamperedValueError(LongTaskError):
    """A value read back from storage failed its signature check: it was not written by this app
    with its key (another ``LONGTASK_SECRET_KEY`` or ``SECRET_KEY``, or tampering). It was not
    unpickled."""


class UnknownSettingWarning(UserWarning):
    """``app.config`` holds a ``LONGTASK_*`` key that Flask-LongTask does not know (a typo,
    usually): it is ignored. Warned at ``init_app``, with the nearest known key."""
