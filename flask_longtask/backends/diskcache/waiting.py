"""Waiting for a job's end in the process that hosts the pool.

There, a wait needs no polling of storage: the host hears of every end of its jobs (its
workers' :class:`~.wire.Done`, and :class:`~.wire.Ended` from processes that end a job some
other way). :class:`Ends` keeps the recent ends, and what they wrote, as their workers sent it;
:func:`wait_done` blocks until the job's end, and when a worker runs the job now, reads that
worker's pipe itself instead of the dispatcher (one wake-up instead of two).
"""

from __future__ import annotations

import collections
import os
import select
import threading
import time
import typing as t

from ...store import keys
from .child import CPUS

if t.TYPE_CHECKING:  # pragma: no cover
    from .host import PoolHost
    from .workers import Worker

#: What the ends of recent jobs wrote is kept up to this many bytes (of the workers' messages)
#: and this many jobs.
END_VALUES_BYTES = 2**20
END_VALUES_JOBS = 1024
#: For this many seconds after a job's end, a wait that starts then is answered from what the
#: end wrote, without a read (:meth:`Ends.tracks`): a purge in another process meanwhile is
#: not seen (the job's own expiry is).
END_VALUES_FRESH = 2.0
#: For how long after a worker is given a job a thread that waits for that job looks for its
#: end before it sleeps: a job that ends within it costs no wake-up of the waiter (on a VM,
#: some 30 us, and caches gone cold). Only while a CPU is free, one such thread at a time.
WAIT_SPIN = 0.001
#: How often a waiter that reads a worker's pipe looks at whether the dispatcher read it first.
TICK = 0.25


class Ends:
    """The jobs that ended here recently (the newest last), and what the ends of the most recent
    of them wrote. An end is recorded with :meth:`add` (under the host's mutex) and announced
    with :meth:`announce` once the mutex is free: a waiter woken by its job's end often submits
    the next one at once, and that submit needs the mutex."""

    def __init__(self) -> None:
        self._ended: collections.OrderedDict[str, float] = collections.OrderedDict()
        self._values: collections.OrderedDict[str, tuple[dict[str, t.Any], int]] = collections.OrderedDict()
        self._bytes = 0
        self._cond = threading.Condition()
        #: Recorded, not yet announced: (job id, what its end wrote or None, its message's size).
        self._pending: list[tuple[str, dict[str, t.Any] | None, int]] = []
        self._pending_lock = threading.Lock()

    def add(self, job_id: str, values: dict[str, t.Any] | None = None, size: int = 0) -> None:
        with self._pending_lock:
            self._pending.append((job_id, values, size))

    def announce(self) -> None:
        """Wake the waiters of the ends recorded since the last call."""
        if not self._pending:
            return
        with self._pending_lock:  # the dispatcher, a waiter or the backend may add more
            ends, self._pending = self._pending, []
        with self._cond:
            now = time.monotonic()
            for job_id, values, size in ends:
                self._ended[job_id] = now
                if values is not None:
                    old = self._values.pop(job_id, None)
                    self._bytes += size - (0 if old is None else old[1])
                    self._values[job_id] = (values, size)
            while len(self._ended) > 1024:  # a waiter looks within moments of its job's end
                self._ended.popitem(last=False)
            while self._values and (len(self._values) > END_VALUES_JOBS or self._bytes > END_VALUES_BYTES):
                self._bytes -= self._values.popitem(last=False)[1][1]
            self._cond.notify_all()

    def values(self, job_id: str) -> dict[str, t.Any] | None:
        """A copy of what the job's end wrote, if it is kept (each waiter its own: a caller may
        change the record)."""
        kept = self._values.get(job_id)
        return None if kept is None else copy(kept[0])

    def wait(self, job_id: str, timeout: float) -> dict[str, t.Any] | None:
        """Block until the job's end is announced, or ``timeout`` seconds; what it wrote, if kept."""
        with self._cond:
            ended = self._ended.get(job_id)
            if ended is not None and job_id not in self._values and time.monotonic() - ended > 1.0:
                # Announced a while ago, yet the waiter still sees it active (it was lost, and
                # ending it failed): no wake-up is coming, so this is a plain wait.
                self._cond.wait(timeout)
                return None
            self._cond.wait_for(lambda: job_id in self._ended, timeout)
        return self.values(job_id)

    def tracks(self, job_id: str, *, known: bool) -> bool:
        """Whether a wait for ``job_id`` may skip its first read: it is ``known`` to the pool
        (queued or running here) and not yet announced ended (its end will wake the waiter), or
        it ended under :data:`END_VALUES_FRESH` seconds ago and what its end wrote is kept here,
        unexpired."""
        with self._cond:
            kept = self._values.get(job_id)
            ended = self._ended.get(job_id)
        if known:
            # Unless it has ended already while still in the queue (cancelled there, or ended
            # by another process): no worker's "done" will answer for it, so read first.
            return ended is None
        if kept is None or ended is None or time.monotonic() - ended >= END_VALUES_FRESH:
            return False
        record = kept[0].get(keys.job(job_id))
        try:  # (as stored: "finished" and "expire", its result's lifetime, in seconds)
            return bool(time.time() < record["finished"] + record["expire"])  # type: ignore[index]
        except (TypeError, KeyError):
            return False


def copy(values: dict[str, t.Any]) -> dict[str, t.Any]:
    """Each waiter its own copy of what a job's end wrote: a caller may change the record."""
    return {k: dict(v) if isinstance(v, dict) else v for k, v in values.items()}


def wait_done(host: PoolHost, job_id: str, timeout: float) -> dict[str, t.Any] | None:
    """Block until a worker of ``host`` is done with ``job_id``, or ``timeout`` seconds; return
    what the job's end wrote, if its worker sent it.

    When a worker runs the job now, the caller reads that worker's "done" itself, in place of
    the dispatcher thread, which would otherwise wake, handle it, and wake the caller: one
    wake-up instead of two, and no dispatcher work between the end and the caller.
    """
    deadline = time.monotonic() + timeout
    kept = host.ends.values(job_id)
    if kept is not None:  # it has ended (see Ends.tracks)
        return kept
    worker = host.watch(job_id, timeout)
    if worker is not None:
        try:
            values = _take_done(host, worker, job_id, deadline)
        finally:
            host.unwatch(worker)
        if values is not None:
            return values
    return host.ends.wait(job_id, max(0.0, deadline - time.monotonic()))


def _take_done(host: PoolHost, worker: Worker, job_id: str, deadline: float) -> dict[str, t.Any] | None:
    """Wait until ``deadline`` (monotonic) for the watched worker that runs ``job_id`` to be done
    with it, and handle its "done" here as the dispatcher would; return what the job's end
    wrote, if the worker sent it."""
    poller = select.poll()
    try:
        poller.register(worker.conn.fileno(), select.POLLIN)
    except (OSError, ValueError):
        return None
    spun = _spin(host, poller, min(worker.given + WAIT_SPIN, deadline))
    while True:
        if not spun:
            while not poller.poll(max(0.0, min(deadline - time.monotonic(), TICK)) * 1000):
                # (The dispatcher may read the "done" itself, before it stops a worker by force.)
                if time.monotonic() >= deadline or worker.job_id != job_id:
                    return None
        spun = False
        if not host.mutex.acquire(timeout=max(0.0, deadline - time.monotonic())):
            return None  # the dispatcher reads it once the pipe is back in its set
        try:
            # Unless the worker died (the dispatcher reaps it: it watches the exit sentinel).
            if worker.job_id != job_id or worker not in host.workers:
                return None
            values = host.read_messages(worker, check=False, want=job_id)
            host.dispatch_idle()  # its worker is idle now (or gave jobs back): the next ones
            host.publish()
            ended = worker.job_id != job_id
        finally:
            host.mutex.release()
        host.ends.announce()
        if ended or worker.eof:  # (dead: the dispatcher reaps it, and wakes waiters then)
            return None if values is None else copy(values)
        # It gave back the jobs sent ahead: its job runs on; watch for its end again.


_spinning = threading.Lock()


def _spin(host: PoolHost, poller: select.poll, until: float) -> bool:
    """Look for the end of a job that started moments ago, until ``until`` (monotonic), if a
    CPU is free and no other thread of this process does the same; whether it came."""
    if time.monotonic() >= until or CPUS < 2 or not _spinning.acquire(blocking=False):
        return False
    try:
        if sum(worker.job_id is not None for worker in host.workers) >= CPUS:
            return False  # every CPU may be running a job
        while not poller.poll(0):
            if time.monotonic() >= until:
                return False
            os.sched_yield()  # anything runnable on this CPU goes first
        return True
    finally:
        _spinning.release()
