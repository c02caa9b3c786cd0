"""ThreadBackend: jobs in a bounded thread pool inside the web process, state in memory."""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
import typing as t
from concurrent.futures import ThreadPoolExecutor

from ..coroutines import concurrency_value
from ._memory_index import MemoryIndex
from .base import MISSING, Backend, JobEnd, JobQuery, JobRequest, NewJob, Tally

if t.TYPE_CHECKING:  # pragma: no cover
    from flask import Flask

_log = logging.getLogger(__name__)


class ThreadBackend(Backend):
    """Run jobs in a bounded pool of threads in this process; keep their state in memory.

    For I/O-bound work, development, and your own tests. Jobs and their records live only as long
    as the process, and only this process sees them. Cancellation is cooperative only (a thread
    cannot be stopped from outside). Values are still pickled, exactly as a process backend
    would, so a test on this backend catches arguments the real one could not carry.

    :param workers: how many jobs run at once (default ``LONGTASK_WORKERS``, else the CPU count).
    :param async_concurrency: how many coroutine jobs (``async def`` tasks) run at once
        (``LONGTASK_ASYNC_CONCURRENCY``, 100), beside those: all on one event loop, in a thread of
        its own, each waited for by a thread of a second pool of that size (see ``docs/async.md``).
    """

    def __init__(self, workers: int | None = None, async_concurrency: int | None = None) -> None:
        self.workers = workers or os.cpu_count() or 1
        self.async_concurrency = concurrency_value(async_concurrency)
        self._copool: ThreadPoolExecutor | None = None
        self._data: dict[str, tuple[t.Any, float | None]] = {}
        #: Guards the records; a batch holds it, so no other thread sees a batch half done
        #: (isolation without rollback: what a failing batch wrote before it failed stays).
        self._lock = threading.RLock()
        self._pool: ThreadPoolExecutor | None = None
        self._writes = 0
        self._queued = 0
        #: The listing index, changed under the lock with the records it follows.
        self._index = MemoryIndex()

    def __repr__(self) -> str:
        return f"<ThreadBackend workers={self.workers}>"

    @classmethod
    def from_app(cls, app: Flask) -> ThreadBackend:
        return cls(
            workers=app.config.get("LONGTASK_WORKERS"), async_concurrency=app.config.get("LONGTASK_ASYNC_CONCURRENCY")
        )

    # -- storage --------------------------------------------------------------------------------

    def _live(self, key: str, now: float) -> t.Any:
        item = self._data.get(key)
        if item is None:
            return MISSING
        if item[1] is not None and item[1] <= now:
            del self._data[key]
            return MISSING
        return item[0]

    def _put(self, key: str, value: t.Any, expire: float | None, now: float) -> None:
        self._data[key] = (value, None if expire is None else now + expire)
        self._writes += 1
        if self._writes % 10_000 == 0:  # keep memory bounded: drop what has expired
            for k in [k for k, (_, at) in self._data.items() if at is not None and at <= now]:
                del self._data[k]

    def get(self, key: str) -> t.Any:
        with self._lock:
            return self._live(key, time.time())

    def set(self, key: str, value: t.Any, expire: float | None = None) -> None:
        with self._lock:
            self._put(key, value, expire, time.time())

    def add(self, key: str, value: t.Any, expire: float | None = None) -> bool:
        with self._lock:
            now = time.time()
            if self._live(key, now) is not MISSING:
                return False
            self._put(key, value, expire, now)
            return True

    def delete(self, key: str) -> None:
        with self._lock:
            self._data.pop(key, None)

    def delete_if(self, key: str, value: t.Any) -> bool:
        with self._lock:
            if self._live(key, time.time()) != value:
                return False
            del self._data[key]
            return True

    @contextlib.contextmanager
    def batch(self) -> t.Iterator[None]:
        with self._lock:
            yield

    def scan(self, prefix: str) -> t.Iterator[str]:
        now = time.time()
        with self._lock:
            keys = [k for k, (_, at) in self._data.items() if k.startswith(prefix) and (at is None or at > now)]
        return iter(keys)

    # -- listing: an index in memory, changed in the batch that writes the records ------------

    def store_and_enqueue(self, job: NewJob) -> None:
        with self._lock:
            self.write_all(job.writes)
            self._index.add(job.entry, time.time())
        job.announce()
        self.enqueue(job.request)

    def end_job(self, end: JobEnd) -> bool | None:
        with self._lock:
            chosen = super().end_job(end)
            entry = None if chosen is None else end.ended(chosen)
            if entry is not None:
                self._index.add(entry, time.time())
                self._index.tally(entry)
        return chosen

    def forget(self, job_id: str) -> None:
        with self._lock:
            self._index.remove(job_id)

    def list_jobs(self, query: JobQuery) -> list[str]:
        with self._lock:
            return self._index.query(query, time.time())

    def count_jobs(self) -> dict[str, int]:
        with self._lock:
            return self._index.counts(time.time())

    def job_tallies(self) -> list[Tally]:
        with self._lock:
            return self._index.tallies()

    def worker_count(self) -> int:
        return self.workers

    # -- execution ------------------------------------------------------------------------------

    def enqueue(self, request: JobRequest) -> None:
        with self._lock:
            if request.task.is_coroutine:  # (a thread each, waiting for its coroutine: .coroutines)
                if self._copool is None:
                    self._copool = ThreadPoolExecutor(self.async_concurrency, thread_name_prefix="longtask-async")
                pool = self._copool
            else:
                if self._pool is None:
                    self._pool = ThreadPoolExecutor(self.workers, thread_name_prefix="longtask")
                pool = self._pool
            self._queued += 1
        pool.submit(self._execute, request)

    def queue_length(self) -> int:
        return self._queued

    def _execute(self, request: JobRequest) -> None:
        from ..worker import execute

        with self._lock:
            self._queued -= 1
        try:
            execute(self, request.job_id, task=request.task, app=request.app)
        except Exception:  # pragma: no cover - execute() records job errors itself
            _log.exception("Internal error running job %s", request.job_id)

    def close(self) -> None:
        with self._lock:
            pools, self._pool, self._copool = (self._pool, self._copool), None, None
        for pool in pools:
            if pool is not None:
                pool.shutdown(wait=True, cancel_futures=False)
