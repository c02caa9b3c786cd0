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


    Coroutine jobs (of ``async def`` tasks) wait in a queue of their own, for the workers of
    coroutine jobs (:mod:`.loops`): ``len()`` and ``pop()`` are the other jobs'.
    """

    def __init__(self) -> None:
        self._waiting: collections.deque[str] = collections.deque()
        #: Coroutine jobs waiting, and every coroutine job known here.
        self._coroutines: collections.deque[str] = collections.deque()
        self._async: set[str] = set()
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
        return job_id in self._waiting or job_id in self._coroutines

    def push(self, job_id: str, *, coroutine: bool = False) -> bool:
        """Queue a job at the end, unless it is known already; whether it was queued."""
        if job_id in self._known:
            return False
        self._count += 1
        self._known[job_id] = self._count
        if coroutine:
            self._async.add(job_id)
            self._coroutines.append(job_id)
        else:
            self._waiting.append(job_id)
        return True

    def coroutines(self) -> int:
        """How many coroutine jobs wait."""
        return len(self._coroutines)

    def is_coroutine(self, job_id: str) -> bool:
        """Whether a job known here is a coroutine job."""
        return job_id in self._async

    def pop_coroutine(self) -> str:
        """Take the first coroutine job waiting (it stays known until :meth:`forget`)."""
        return self._coroutines.popleft()

    def know(self, job_id: str) -> None:
        """Know of a job that never waits (handed straight to a worker)."""
        self._known[job_id] = 0

    def pop(self) -> str:
        """Take the first waiting job (it stays known until :meth:`forget`)."""
        return self._waiting.popleft()

    def unpop(self, job_id: str) -> None:
        """Put back first a job just taken with :meth:`pop` or :meth:`pop_coroutine`."""
        (self._coroutines if job_id in self._async else self._waiting).appendleft(job_id)

    def requeue(self, job_id: str) -> None:
        """Put back a job that was taken and never started, in its place (a job never queued
        here goes before every job queued here)."""
        place = self._known.setdefault(job_id, 0)
        waiting = self._coroutines if job_id in self._async else self._waiting
        at = next((i for i, queued in enumerate(waiting) if self._known.get(queued, 0) > place), len(waiting))
        waiting.insert(at, job_id)

    def forget(self, job_id: str) -> None:
        """The job is over here (ended, or lost)."""
        self._known.pop(job_id, None)
        self._async.discard(job_id)


class Delayed:
    """Jobs to queue later (retries waiting out their backoff): job id -> when (epoch). Not
    thread-safe: the host's mutex guards it."""

    def __init__(self) -> None:
        self._due: dict[str, float] = {}
        #: Those of coroutine jobs (queued as such when due).
        self.coroutines: set[str] = set()

    def __len__(self) -> int:
        return len(self._due)

    def __contains__(self, job_id: object) -> bool:
        return job_id in self._due

    def add(self, job_id: str, due: float, *, coroutine: bool = False) -> None:
        self._due[job_id] = due
        if coroutine:
            self.coroutines.add(job_id)

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
