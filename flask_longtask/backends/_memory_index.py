"""A listing index in memory (:class:`~flask_longtask.backends.thread.ThreadBackend`'s).

Job ids sort by their submit time, so each list below is kept sorted by id: every job's id in
one, and one list per status, per task and per owner. A query walks the shortest list its
filters name (or the list of all) from its ``before`` down, and checks each entry against the
rest. Entries that end with an expiry are dropped once it passes (a heap of expiry times, looked
at on each change and query).
"""

from __future__ import annotations

import bisect
import heapq
import typing as t

from .base import JobEntry, JobQuery
from .entry import Tally, tally_of


class MemoryIndex:
    """Entries by id, and sorted lists of ids; not thread-safe (its owner holds a lock)."""

    def __init__(self) -> None:
        #: Each entry, and when it expires (epoch seconds; ``None``: never).
        self._entries: dict[str, tuple[JobEntry, float | None]] = {}
        self._lists: dict[tuple[str, str | None], list[str]] = {}
        self._expiry: list[tuple[float, str]] = []
        #: The metrics' tallies: (task, status, bound) -> [jobs, seconds, retries].
        self._tallies: dict[tuple[str, str, float | None], list[t.Any]] = {}

    def __len__(self) -> int:
        return len(self._entries)

    def _keys(self, entry: JobEntry) -> list[tuple[str, str | None]]:
        names = [("all", None), ("status", entry.status), ("task", entry.task)]
        if entry.owner is not None:
            names.append(("owner", entry.owner))
        return names

    def add(self, entry: JobEntry, now: float) -> None:
        """A job's entry: a new job's, or one that ended (which replaces the one before)."""
        self.remove(entry.id)
        at = None if entry.expire is None else now + entry.expire
        self._entries[entry.id] = (entry, at)
        for name in self._keys(entry):
            bisect.insort(self._lists.setdefault(name, []), entry.id)
        if at is not None:
            heapq.heappush(self._expiry, (at, entry.id))
        self.sweep(now)

    def remove(self, job_id: str) -> None:
        old = self._entries.pop(job_id, None)
        if old is None:
            return
        for name in self._keys(old[0]):
            ids = self._lists[name]
            i = bisect.bisect_left(ids, job_id)
            if i < len(ids) and ids[i] == job_id:
                del ids[i]
            if not ids:
                del self._lists[name]

    def sweep(self, now: float) -> None:
        """Drop the entries whose expiry has passed."""
        while self._expiry and self._expiry[0][0] <= now:
            at, job_id = heapq.heappop(self._expiry)
            item = self._entries.get(job_id)
            if item is not None and item[1] == at:  # (not re-added with another expiry since)
                self.remove(job_id)

    def query(self, query: JobQuery, now: float) -> list[str]:
        self.sweep(now)
        named = [
            (kind, value) for kind, value in (("task", query.task), ("owner", query.owner), ("status", query.status))
        ]
        lists = [self._lists.get(name, []) for name in named if name[1] is not None]
        ids = min(lists, key=len) if lists else self._lists.get(("all", None), [])
        end = len(ids) if query.before is None else bisect.bisect_left(ids, query.before)
        low = query.lowest_id() or ""
        found: list[str] = []
        for i in range(end - 1, -1, -1):
            job_id = ids[i]
            if job_id < low:
                break
            if query.matches(self._entries[job_id][0]):
                found.append(job_id)
                if len(found) >= query.limit:
                    break
        return found

    def tally(self, entry: JobEntry) -> None:
        """Add a job that ended to the tallies."""
        task, status, bound, seconds, retries = tally_of(entry)
        held = self._tallies.setdefault((task, status, bound), [0, 0.0, 0])
        held[0] += 1
        held[1] += seconds
        held[2] += retries

    def tallies(self) -> list[Tally]:
        return [Tally(task, status, bound, *held) for (task, status, bound), held in self._tallies.items()]

    def counts(self, now: float) -> dict[str, int]:
        self.sweep(now)
        return {name: len(ids) for (kind, name), ids in self._lists.items() if kind == "status" and name is not None}


__all__ = ["MemoryIndex"]
