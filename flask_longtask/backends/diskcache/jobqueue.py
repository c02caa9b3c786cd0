"""The pool's queue: job ids in the order they were queued, each in its place for good."""

from __future__ import annotations

import collections
import math


class JobQueue:
    """The jobs the host knows of (queued here, or given to a worker), and those waiting.

    Each job gets an order number when it is first queued; a job taken from the queue and
    put back (given back by a worker, or requeued after its worker died before starting it)
    goes back to its place, before the jobs queued after it. Not thread-safe: the host's mutex
    guards it.
    """

    def __init__(self) -> None:
        self._waiting: collections.deque[str] = collections.deque()
        #: Every job queued or running here, with its order number (0: never queued).
        self._known: dict[str, int] = {}
        self._count = 0

    def __len__(self) -> int:
        return len(self._waiting)

    def __bool__(self) -> bool:
        return bool(self._waiting)

    def __contains__(self, job_id: object) -> bool:
        """Whether the job is known here: waiting, or given to a worker and not yet done."""
        return job_id in self._known

    def waiting(self, job_id: str) -> bool:
        """Whether the job waits in the queue (not given to a worker)."""
        return job_id in self._waiting

    def push(self, job_id: str) -> bool:
        """Queue a job at the end, unless it is known already; whether it was queued."""
        if job_id in self._known:
            return False
        self._count += 1
        self._known[job_id] = self._count
        self._waiting.append(job_id)
        return True

    def know(self, job_id: str) -> None:
        """Know of a job that never waits (handed straight to a worker)."""
        self._known[job_id] = 0

    def pop(self) -> str:
        """Take the first waiting job (it stays known until :meth:`forget`)."""
        return self._waiting.popleft()

    def unpop(self, job_id: str) -> None:
        """Put back first a job just taken with :meth:`pop`."""
        self._waiting.appendleft(job_id)

    def requeue(self, job_id: str) -> None:
        """Put back a job that was taken and never started, in its place (a job never queued
        here goes before every job queued here)."""
        place = self._known.setdefault(job_id, 0)
        waiting = self._waiting
        at = next((i for i, queued in enumerate(waiting) if self._known.get(queued, 0) > place), len(waiting))
        waiting.insert(at, job_id)

    def forget(self, job_id: str) -> None:
        """The job is over here (ended, or lost)."""
        self._known.pop(job_id, None)


class Delayed:
    """Jobs to queue later (retries waiting out their backoff): job id -> when (epoch). Not
    thread-safe: the host's mutex guards it."""

    def __init__(self) -> None:
        self._due: dict[str, float] = {}

    def __len__(self) -> int:
        return len(self._due)

    def __contains__(self, job_id: object) -> bool:
        return job_id in self._due

    def add(self, job_id: str, due: float) -> None:
        self._due[job_id] = due

    def next_due(self, queue: JobQueue) -> float:
        """When the first is due (epoch) of those the queue does not know, ``inf`` when none
        waits (a job the queue knows is taken after its worker's "done", which wakes the host)."""
        return min((when for job_id, when in self._due.items() if job_id not in queue), default=math.inf)

    def take_due(self, now: float, queue: JobQueue) -> list[str]:
        """The jobs due by ``now``, earliest first, taken out; not one the queue still knows (its
        worker has not yet reported the failed attempt's end: it is taken once it has)."""
        due = sorted((when, job_id) for job_id, when in self._due.items() if when <= now and job_id not in queue)
        for _, job_id in due:
            del self._due[job_id]
        return [job_id for _, job_id in due]
