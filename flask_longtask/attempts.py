"""A job's attempts: its time limit and its retries, as submitted and as read back from its
record (which storage may hand back rewritten: every value is checked)."""

from __future__ import annotations

import math
import random
import typing as t


def time_limit_value(value: t.Any, where: str) -> float | None:
    """A time limit as stored: seconds (a positive number), or ``None`` for none (``None`` or
    ``math.inf`` given). ``where`` names the setting in the error.

    :raises TypeError: not a number.
    :raises ValueError: zero, negative or NaN.
    """
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{where} must be a number of seconds or None, not {value!r}.")
    if not value > 0:  # (NaN too)
        raise ValueError(f"{where} must be more than 0 seconds (None: no limit), not {value!r}.")
    if value == math.inf:
        return None
    try:
        return float(value)
    except OverflowError:
        raise ValueError(f"{where} is too large: {value!r}.") from None


def time_limit_error(limit: t.Any) -> dict[str, str]:
    """The error a job that ran past its time limit ends with (``TimeLimitExceeded``);
    ``limit`` as read from its record (anything but a number is not shown)."""
    seconds = f" of {limit:g} seconds" if isinstance(limit, (int, float)) and not isinstance(limit, bool) else ""
    return {"type": "TimeLimitExceeded", "message": f"The job ran past its time limit{seconds}.", "traceback": ""}


def attempt_of(record: t.Mapping[str, t.Any]) -> int:
    """The attempt a job's record says runs (or ran last): 1 for the first, whatever storage
    holds that is not a positive whole number."""
    attempt = record.get("attempt", 1)
    return attempt if isinstance(attempt, int) and not isinstance(attempt, bool) and attempt > 0 else 1


#: The most retries a task may allow: a job runs ``1 + MAX_RETRIES`` attempts at most.
MAX_RETRIES = 1000

#: Seconds a retry waits at most, however many attempts came before (Celery's default too).
RETRY_BACKOFF_MAX = 600.0


def retries_of(record: t.Mapping[str, t.Any]) -> int:
    """How many more attempts a job's record says its task allowed (0 for anything else)."""
    retries = record.get("retries", 0)
    return retries if isinstance(retries, int) and not isinstance(retries, bool) and retries >= 0 else 0


def retry_delay(backoff: float, attempt: int) -> float:
    """Seconds before attempt ``attempt + 1`` after attempt ``attempt`` failed: ``backoff`` times
    2**(attempt-1), at most :data:`RETRY_BACKOFF_MAX`, give or take 25% (so that jobs that
    failed together do not retry together)."""
    return min(backoff * 2.0 ** min(attempt - 1, 64), RETRY_BACKOFF_MAX) * random.uniform(0.75, 1.25)


def is_time_limit(flag: t.Any) -> bool:
    """Whether a job's cancel flag, as read back from storage, was raised by its time limit
    (anything else, a float included, is a cancel)."""
    return isinstance(flag, dict) and flag.get("reason") == "time_limit"
