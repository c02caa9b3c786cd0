"""What a backend's listing index keeps of each job (:class:`JobEntry`), what the core asks it
(:class:`JobQuery`), and what it counts of the jobs that ended, for the metrics (:class:`Tally`).

A backend gets the entries handed over (``NewJob.entry``, ``JobEnd.ended``) and keeps them with
the writes of the same step; it never reads them out of keys. Which histogram bucket a job's
duration falls in, and what an end adds to the tallies, is said here once (:func:`tally_of`),
for every backend.
"""

from __future__ import annotations

import bisect
import math
import typing as t
from dataclasses import dataclass

from ..attempts import attempt_of


@dataclass(frozen=True)
class JobEntry:
    """A job as a backend's listing index keeps it (see :meth:`Backend.list_jobs`).

    The index learns of a job twice: as it is created (:attr:`NewJob.entry`, status
    ``"queued"``) and as it ends (:attr:`JobEnd.entry`, its final status). A claim does not
    touch it: a running job is ``"queued"`` in the index, and the core tells the two apart by
    reading the job's claim. A retry does not either: the job stays ``"queued"``.
    """

    id: str
    #: The task's name.
    task: str
    #: ``"queued"`` until the job ends, then ``"succeeded"``, ``"failed"`` or ``"cancelled"``.
    status: str
    #: When it was submitted (epoch seconds).
    created: float
    #: Who submitted it over HTTP (``None`` from Python code).
    owner: str | None = None
    #: Seconds from the end the entry is kept: as long as the job's final record (``None``:
    #: until deleted, as a queued job's).
    expire: float | None = None
    #: When its last attempt started and when it ended (epoch seconds), once it has ended.
    started: float | None = None
    finished: float | None = None
    #: Its attempt (1 for the first; a retried job counts on), as it ended.
    attempt: int = 1

    @classmethod
    def of(cls, record: t.Mapping[str, t.Any]) -> JobEntry:
        """The entry of a job's stored record, as it says now (the default :meth:`Backend.list_jobs`
        reads records this way)."""
        owner = record.get("owner")
        return cls(
            str(record["id"]),
            str(record.get("task")),
            str(record.get("status")),
            float(record.get("created") or 0.0),
            owner if isinstance(owner, str) else None,
            started=record.get("started"),
            finished=record.get("finished"),
            attempt=attempt_of(record),
        )


#: Seconds a job's id may be made before its ``created`` (a submit may wait between the two:
#: for an in-flight job of its memo key, up to 5 s).
SINCE_SLACK: t.Final = 60.0


@dataclass(frozen=True)
class JobQuery:
    """What the core asks a backend's listing index for (:meth:`Backend.list_jobs`): the ids of
    the entries that match every condition given, newest first."""

    #: An entry status (``"queued"`` stands for queued and running jobs alike), or ``None``.
    status: str | None = None
    #: A task's name, or ``None``.
    task: str | None = None
    #: An owner, or ``None``.
    owner: str | None = None
    #: Only entries created at or after this time (epoch seconds), or ``None``.
    since: float | None = None
    #: Only ids that sort before this one (the last id of the page before), or ``None``.
    before: str | None = None
    #: At most this many ids.
    limit: int = 100

    def lowest_id(self) -> str | None:
        """With ``since``: an id that sorts below the id of every job created since then (ids
        begin with the time they were made, in hex milliseconds, which is at most
        :data:`SINCE_SLACK` before the job's ``created``). An index walking ids down stops there."""
        if self.since is None:
            return None
        return f"{max(int((self.since - SINCE_SLACK) * 1000), 0) & 0xFFFFFFFFFFFF:012x}"

    def matches(self, entry: JobEntry) -> bool:
        """Whether ``entry`` meets every condition but ``before`` and ``limit``."""
        return (
            (self.status is None or entry.status == self.status)
            and (self.task is None or entry.task == self.task)
            and (self.owner is None or entry.owner == self.owner)
            and (self.since is None or entry.created >= self.since)
        )


#: The upper bounds (seconds) of the buckets of the job duration histogram: Prometheus's default
#: buckets, and longer ones for long jobs. A duration above the last is in the ``+Inf`` bucket.
DURATION_BUCKETS: t.Final = (
    0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
    30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0,
)  # fmt: skip


@dataclass(frozen=True)
class Tally:
    """What the jobs that ended with one task, status and duration bucket add up to, since the
    backend began keeping tallies: counters, never lowered (a purge or an expiry does not touch
    them). See :meth:`Backend.job_tallies <flask_longtask.backends.Backend.job_tallies>`."""

    task: str
    status: str
    #: The upper bound of the duration's bucket (:data:`DURATION_BUCKETS`, or ``math.inf``);
    #: ``None`` for jobs that ended without having started (cancelled while queued).
    bound: float | None
    #: How many jobs.
    jobs: int
    #: The sum of their durations (seconds).
    seconds: float
    #: The sum of their retries (attempts after the first).
    retries: int


def tally_of(entry: JobEntry) -> tuple[str, str, float | None, float, int]:
    """What one job's end adds to the tallies: ``(task, status, bound, seconds, retries)``;
    ``entry`` as :meth:`JobEnd.ended <flask_longtask.backends.JobEnd.ended>` gives it."""
    bound: float | None = None
    seconds = 0.0
    started, finished = entry.started, entry.finished
    if _number(started) and _number(finished):
        seconds = max(t.cast(float, finished) - t.cast(float, started), 0.0)
        i = bisect.bisect_left(DURATION_BUCKETS, seconds)
        bound = DURATION_BUCKETS[i] if i < len(DURATION_BUCKETS) else math.inf
    return entry.task, entry.status, bound, seconds, max(entry.attempt - 1, 0)


def _number(value: t.Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
