"""Lifecycle signals, in a private blinker namespace.

Every signal's sender is the Flask app, and every signal carries the job as ``job=``. A signal is
sent by **the process that makes the transition**: submission and cache hits in the process that
calls ``submit()``; start, progress and the end of a job in the process that runs it (the web
process for :class:`~flask_longtask.backends.thread.ThreadBackend`, a worker process for the
process and Celery backends). Connect receivers at import time of your app module so that worker
processes have them too. A receiver that raises is logged and skipped: it never breaks a worker
or a submit.
"""

from __future__ import annotations

import logging
import typing as t

from blinker import Namespace, Signal

_signals = Namespace()
_log = logging.getLogger(__name__)

#: A job was queued. Sent by the submitting process; ``job=``.
job_submitted = _signals.signal("job-submitted")
#: A worker claimed a job and is about to run it. Sent by the running process; ``job=``.
job_started = _signals.signal("job-started")
#: New progress was stored (coalesced: at most once a ``LONGTASK_PROGRESS_INTERVAL``, plus the
#: last value at the end). Sent by the running process; ``job=``, ``progress=``.
job_progress = _signals.signal("job-progress")
#: A job returned and its result is stored. Sent by the running process; ``job=``, ``result=``.
job_succeeded = _signals.signal("job-succeeded")
#: A job raised, its result could not be stored, or its worker died. ``job=``, ``error=`` (the
#: ``{type, message, traceback}`` record). Sent by the running process, or for a dead worker by
#: the process that noticed.
job_failed = _signals.signal("job-failed")
#: A job's attempt failed with an error its task retries on, and it is queued to run again.
#: Sent by the running process; ``job=``, ``error=`` (the failed attempt's ``{type, message,
#: traceback}``), ``attempt=`` (the number of the attempt to come: 2 after the first failed).
job_retrying = _signals.signal("job-retrying")
#: A job ended cancelled. Sent by the process that ended it: the canceller for a queued job,
#: the running process for a running one; ``job=``.
job_cancelled = _signals.signal("job-cancelled")
#: ``submit()`` found a result for the same memo key, or joined the same in-flight job, and
#: started nothing. Sent by the submitting process; ``job=`` (the existing job),
#: ``in_flight=`` (``True`` when joined while still queued or running).
cache_hit = _signals.signal("cache-hit")


def send(signal: Signal, sender: t.Any, **kwargs: t.Any) -> None:
    """Send ``signal``, logging and skipping a receiver that raises."""
    if not signal.receivers:
        return
    for receiver in signal.receivers_for(sender):
        try:
            receiver(sender, **kwargs)
        except Exception:
            _log.exception("Receiver %r of signal %r raised; ignored.", receiver, getattr(signal, "name", signal))
