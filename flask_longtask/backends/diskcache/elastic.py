"""The pool's size: it grows for jobs that wait, and shrinks when workers stay idle.

``workers`` processes are kept warm; ``max_workers`` is the ceiling. Once a tick (the host's
``TICK``), and only while every worker that takes jobs is busy and jobs wait, the host reads what
each busy worker asks of the CPU (:func:`demand`), and how idle the CPUs this process may use were
(:class:`Cpus`), and compares them with the previous tick's readings. A worker that used less
than :data:`WAITING_BELOW` of a CPU meanwhile is *waiting* (its job sleeps, or blocks in I/O); one
that used more is *burning*. The pool then starts more workers (:func:`growth`): none unless half
a CPU was idle; one per job waiting when every worker waits; else as many as are waiting, or up to
the CPUs that no burning or unjudged worker may be using; at most one per whole idle CPU when
something the judgements do not see (a job's child processes, another program) uses the CPUs;
within the ceiling. While the burning workers fill the CPUs, it starts none, and only the first
``max(workers, CPUS)`` workers are given jobs: the others go idle, and retire. A worker judged
waiting is sent no job ahead (:data:`~.host.AHEAD`): the queued job stays in the queue, for the
next free worker or the one being started.

A worker above ``workers`` that has had no job for ``worker_idle`` seconds is *retired*: under the
host's mutex, while it has nothing sent ahead, nothing in its pipe and no waiter reading it, the
host takes it out of the pool and closes its pipe and lifeline; it exits at once, and its exit is
not a death (nothing to fail, no replacement, no back-off). ``docs/internals.md`` says more.

This module imports nothing else of the package: :data:`CPUS` is read by the workers too. The
CPUs, and the check of the size settings, are in :mod:`flask_longtask.backends.pool_size`.
"""

from __future__ import annotations

import logging
import os
import time
import typing as t

from ..pool_size import CPUS as CPUS  # (the CPUs this process may use, and the size settings:
from ..pool_size import Quota as Quota  # kept apart for LongTask.init_app, and named here too)
from ..pool_size import cgroup_quota as cgroup_quota
from ..pool_size import read as _read
from ..pool_size import settings as settings
from ..pool_size import usable_cpus as usable_cpus

if t.TYPE_CHECKING:  # pragma: no cover
    from .host import PoolHost
    from .workers import Worker

_log = logging.getLogger(__name__)

#: A worker whose job used less than this share of one CPU over the last tick is waiting. (The
#: workers of a flood of no-op jobs use 0.6-0.7 each on 2 CPUs, waiting for SQLite's lock and the
#: host: more of them would not help; a job that sleeps or waits on the network, a few hundredths.)
WAITING_BELOW = 0.3
#: The CPUs that must have been idle over the last tick for the pool to grow (whoever used the
#: others: its workers, their children, other programs); the CPU use the judgements may leave
#: unexplained before growth is held to one worker per whole CPU idle.
IDLE_CPU = 0.5
#: Seconds after its start before a worker's CPU is read: it is importing the app meanwhile.
STARTING = 0.2
#: Two readings judge a worker only this many seconds apart (half and twice the host's ``TICK``):
#: sooner, the next tick judges it (CPU time is counted in 10 ms steps); later, the dispatcher was
#: kept from its workers, and the measurement starts again.
SHORTEST, LONGEST = 0.125, 0.5
#: A step of the dispatcher that took longer than this (seconds) kept it from its workers'
#: messages: a worker that ended its job meanwhile waited for the next, idle, and its CPU since
#: the last reading says nothing of its jobs. The measurement starts again.
LATE = 0.05
#: Seconds a retired worker has to exit before it is killed (it has no job: it exits at once).
RETIRE_WAIT = 1.0
#: Clock ticks per second of ``/proc``'s CPU times.
_CLK_TCK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


class Cpus:
    """The CPUs this process may use, as a whole: how much of them is idle. One ``/proc/stat``
    read (and, under a quota, one of the cgroup's use) a tick, while the pool is saturated."""

    def __init__(self) -> None:
        self.ids = {f"cpu{n}" for n in os.sched_getaffinity(0)} if hasattr(os, "sched_getaffinity") else None
        self.quota = cgroup_quota()
        #: How many CPUs' worth there is: those it may run on, within the quota.
        self.capacity = float(len(self.ids) if self.ids else os.cpu_count() or 1)
        if self.quota is not None:
            self.capacity = min(self.capacity, self.quota.cpus)

    def read(self) -> tuple[float, float] | None:
        """Seconds the CPUs it may run on were idle so far (``idle`` and ``iowait`` of each), and
        the seconds of CPU its cgroup used so far under a quota (else 0); ``None`` without
        ``/proc/stat``."""
        idle = 0.0
        try:
            with open("/proc/stat", "rb") as f:
                for line in f:
                    if not line.startswith(b"cpu"):
                        break
                    fields = line.split()
                    name = fields[0].decode()
                    if name != "cpu" and (self.ids is None or name in self.ids):
                        idle += int(fields[4]) + int(fields[5])
        except (OSError, ValueError, IndexError):
            return None
        used = 0.0
        if self.quota is not None:
            text = _read(self.quota.usage)
            if self.quota.usage.endswith("cpu.stat"):  # v2: microseconds
                usec = [line.split()[1] for line in text.splitlines() if line.startswith("usage_usec ")]
                used = int(usec[0]) / 1e6 if usec and usec[0].isdigit() else 0.0
            elif text.isdigit():  # v1: nanoseconds
                used = int(text) / 1e9
        return idle / _CLK_TCK, used

    def free(self, idle: float, used: float) -> float:
        """The CPUs idle over an interval, given the seconds of each count (:meth:`read`) per second."""
        return idle if self.quota is None else max(0.0, min(idle, self.quota.cpus - used))


def demand(pid: int) -> float | None:
    """Seconds of CPU the process ``pid`` has asked for so far; ``None`` where this cannot be read
    (not Linux: the pool then never grows). The larger of two counts: its main thread's time on a
    CPU plus its time waiting for one (``schedstat``: a job that burns CPU on a crowded machine
    asks for a whole CPU even when it gets half of one), and the CPU time of all its threads
    (``stat``: a job whose threads do the work while the main thread waits for them). Without
    ``schedstat`` (some sandboxes), only the CPU time it got. Its child processes are not counted:
    their CPU shows in the CPUs' reading (:class:`Cpus`)."""
    counts = []
    try:
        fd = os.open(f"/proc/{pid}/schedstat", os.O_RDONLY)
        try:
            run, delay = os.read(fd, 128).split()[:2]
        finally:
            os.close(fd)
        counts.append((int(run) + int(delay)) / 1e9)
    except (OSError, ValueError):
        pass
    try:
        fd = os.open(f"/proc/{pid}/stat", os.O_RDONLY)
        try:
            fields = os.read(fd, 1024).rpartition(b")")[2].split()  # (after the command's name)
        finally:
            os.close(fd)
        counts.append((int(fields[11]) + int(fields[12])) / _CLK_TCK)  # utime, stime
    except (OSError, ValueError, IndexError):
        pass
    return max(counts, default=None)


def ceiling(workers: int, max_workers: int | None) -> int:
    """The most workers the pool may run: ``max_workers``, by default four per CPU this process
    may use; never below ``workers``."""
    return max(workers, max_workers or 4 * CPUS)


def growth(
    shares: t.Sequence[float], *, unknown: int, cpus: int, room: int, queued: int, free: float, other: float
) -> int:
    """How many workers to start, given the CPU ``shares`` of the busy workers judged this tick
    (each in CPUs), how many busy workers are not judged (``unknown``: too new, or read too soon),
    the ``cpus`` this process may use, the ``room`` under the ceiling, the jobs ``queued``, the
    CPUs that were ``free`` (idle) over the tick, and the CPUs used meanwhile by ``other`` than the
    judged workers and the host (their children, workers starting, other programs).

    None while the burning workers fill the CPUs, less than :data:`IDLE_CPU` was free, or none is
    judged yet. When every busy worker is judged and waits, one for each job waiting: the jobs are
    presumed like the running ones. Else as many as are waiting (the waiting part doubles each
    tick), or as many as fill the CPUs that neither the burning nor the unknown workers may be
    using (a pool smaller than the CPUs grows to them with work that burns CPU), whichever is
    more. When ``other`` uses :data:`IDLE_CPU` or more, the judgements do not tell all (a job's
    work may be in a child process): at most one per whole CPU free (a moment's gap between two
    jobs is not a free CPU), less the unknown workers. Within the ceiling."""
    burning = sum(share >= WAITING_BELOW for share in shares)
    waiting = len(shares) - burning
    if not shares or burning >= cpus or room <= 0 or queued <= 0 or free < IDLE_CPU:
        return 0
    count = queued if burning == 0 and unknown == 0 else max(waiting, cpus - burning - unknown)
    if other >= IDLE_CPU:
        count = min(count, int(free) - unknown)
    return max(0, min(room, queued, count))


class Elastic:
    """The elastic part of one pool host: the readings of its workers' CPU and of the CPUs, and
    the workers it retired that have not exited yet. Its methods run in the dispatcher, under the
    host's mutex (:meth:`step` takes it)."""

    def __init__(self, size: int, max_size: int, idle: float) -> None:
        #: How many workers are kept warm, the ceiling, and the idle time that retires the others.
        self.size, self.max_size, self.idle = size, max_size, idle
        #: Whether the pool has a fixed size (nothing is read, started or retired).
        self.fixed = max_size == size
        #: Retired workers not yet seen to exit, with the time (monotonic) they are killed at.
        self.retiring: list[tuple[Worker, float]] = []
        #: Whether the last judgement found burning workers (that have ended a job) filling the
        #: CPUs: the workers past the first ``max(size, CPUS)`` are then given no job
        #: (:attr:`.Worker.held`).
        self.full = False
        self._cpus = Cpus()
        #: The CPUs' last reading: (idle seconds, the cgroup's seconds, the host's seconds, when).
        self._mark: tuple[float, float, float, float] | None = None
        #: Whether workers carry readings (or judgements) of a tick during which all were busy.
        self._marked = False

    @property
    def unread(self) -> bool:
        """Whether a pool that may grow has no readings yet: when it fills, the dispatcher takes
        them at once (its next step, not its next tick), and judges them :data:`SHORTEST` later."""
        return not (self.fixed or self._marked)

    def step(self, host: PoolHost, woke: float, ticked: bool) -> float | None:
        """After each step of the dispatcher (``woke``: when it began, monotonic), last, whatever
        it did: start the readings again if it took longer than :data:`LATE`; take the first ones
        as soon as the pool is saturated. Once a tick (after the dispatch: a worker just done is
        busy again): end the retired workers that exited, retire idle ones, judge the workers and
        start more while every one is busy and jobs are queued, hold workers back while burning
        ones fill the CPUs; then dispatch. When its readings were the first (nothing could be
        judged), when (monotonic) it wants the next tick: :data:`SHORTEST` from now."""
        if self.fixed:
            return None  # a fixed pool: nothing to read, start or retire
        late = time.monotonic() - woke > LATE
        if not (late or ticked or self.unread):
            return None
        with host.mutex:
            if late:
                self._forget(host, judgements=False)
            if not ticked:  # (the first readings of a pool that just filled: judged soon)
                first = self.unread and self._saturated(host) and self._grow(host)
                return time.monotonic() + SHORTEST if first else None
            now = time.monotonic()
            if self.retiring:
                self._reap(now)
            if len(host.workers) > self.size:
                self._retire_idle(host, now)
            first = False
            if self._saturated(host):
                first = self._grow(host)
            elif self._marked:
                self._forget(host, judgements=True)
            top = max(self.size, CPUS)
            for index, worker in enumerate(host.workers):
                worker.held = self.full and index >= top
            host.dispatch_idle()  # (to the workers it started, or no longer holds back)
            host.publish()
        return time.monotonic() + SHORTEST if first else None

    def _forget(self, host: PoolHost, *, judgements: bool) -> None:
        """Forget the readings (to start again), and the judgements too when the pool is no longer
        saturated."""
        self._mark = None
        for worker in host.workers:
            worker.mark = None
            if judgements:
                worker.waiting = None
        self._marked = self._marked and not judgements

    @staticmethod
    def _saturated(host: PoolHost) -> bool:
        """Whether every worker that takes jobs has one and more wait: in the queue, or sent ahead."""
        takers = [worker for worker in host.workers if not worker.held]
        if not takers or not (host.queue or any(worker.ahead for worker in takers)):
            return False
        return all(worker.job_id is not None for worker in takers)

    def _grow(self, host: PoolHost) -> bool:
        """Judge each busy worker by its CPU since the last tick, read the CPUs, and start more
        workers if :func:`growth` says so; whether the CPUs' reading was the first (nothing could
        be judged). (It judges at the ceiling too: a worker judged waiting is sent no job ahead,
        and burning ones that fill the CPUs hold the others back.)"""
        self._marked = True
        shares = []
        busy = settled = 0  # (settled: burning workers past their start, which hold others back)
        for worker in host.workers:
            if worker.job_id is None:
                worker.mark = None  # (idle meanwhile: the next interval starts when it is busy)
                continue
            busy += 1
            if time.monotonic() - worker.started < STARTING:
                continue  # (it imports the app: its first interval says nothing of its job)
            used = demand(worker.pid)
            if used is None:
                continue
            mark = _mark(worker.mark, (used, time.monotonic()))
            share, worker.mark = _since(worker.mark, mark), mark
            if share is not None:
                worker.waiting = share < WAITING_BELOW
                shares.append(share)
                settled += worker.settled and not worker.waiting
        if shares:  # (workers that just started may still be importing the app: not them)
            self.full = settled >= CPUS
        read = self._cpus.read()
        if read is None:
            return False
        previous = self._mark
        reading = self._mark = _mark(previous, (*read, sum(os.times()[:2]), time.monotonic()))
        if reading is previous or previous is None or reading[-1] - previous[-1] > LONGEST:
            return reading is not previous
        span = reading[-1] - previous[-1]
        idle, used, host_used = ((now - then) / span for now, then in zip(reading[:3], previous[:3], strict=True))
        free = self._cpus.free(idle, used)
        other = self._cpus.capacity - free - host_used - sum(shares)
        # (The retiring still run; so do the workers of coroutine jobs: one ceiling for both.)
        loops = len(host.loops.workers) + len(host.loops.retiring)
        room = self.max_size - len(host.workers) - len(self.retiring) - loops
        count = growth(
            shares, unknown=busy - len(shares), cpus=CPUS, room=room, queued=host.queued(), free=free, other=other
        )
        started = 0
        while started < count and time.monotonic() >= host.next_spawn:  # (workers that die as they start: back off)
            host.add_worker()
            started += 1
        if started:
            _log.debug("Worker pool of %s: %d more workers for waiting jobs.", host.backend.directory, started)
        return False

    def _retire_idle(self, host: PoolHost, now: float) -> None:
        idle: list[Worker] = []
        for worker in host.workers:
            if not worker.jobless or worker.watched or worker.eof:
                worker.idle_since = None
                continue
            if worker.idle_since is None or worker.given > worker.idle_since:
                worker.idle_since = now  # (idle since the tick that first saw it so, or since its job)
            elif now - worker.idle_since >= self.idle:
                idle.append(worker)
        idle.sort(key=lambda worker: t.cast(float, worker.idle_since))
        for worker in idle[: len(host.workers) - self.size]:
            if worker.readable():  # a message (or its death) waits: the dispatcher reads it first
                continue
            host.workers.remove(worker)  # no job reaches it from here: it is not in the pool
            if not worker.close():  # its pipe and lifeline: it exits at once (its lifeline thread: os._exit(0))
                self.retiring.append((worker, now + RETIRE_WAIT))
            _log.debug("Worker pool of %s: retired idle worker %s.", host.backend.directory, worker.pid)

    def _reap(self, now: float) -> None:
        """Release the retired workers that exited; kill one that has not within its time."""
        self.retiring = release_retired(self.retiring, now)

    def shutdown(self) -> None:
        """As the pool shuts down: wait for the retired workers that are still exiting."""
        deadline = time.monotonic() + RETIRE_WAIT
        for worker, _ in self.retiring:
            worker.stop(deadline)
            worker.close()
        self.retiring = []


_Reading = t.TypeVar("_Reading", bound="tuple[float, ...]")


def _mark(mark: _Reading | None, reading: _Reading) -> _Reading:
    """The reading to keep: the new one, or the last one kept if that is less than
    :data:`SHORTEST` old (the next tick measures from it). Each reading ends with when it was read."""
    return mark if mark is not None and reading[-1] - mark[-1] < SHORTEST else reading


def _since(mark: tuple[float, float] | None, reading: tuple[float, float]) -> float | None:
    """The CPUs a worker asked for between two readings (seconds so far, when), if they are
    between :data:`SHORTEST` and :data:`LONGEST` apart."""
    if mark is None or not SHORTEST <= reading[1] - mark[1] <= LONGEST:
        return None
    return (reading[0] - mark[0]) / (reading[1] - mark[1])


def release_retired(retiring: list[tuple[Worker, float]], now: float) -> list[tuple[Worker, float]]:
    """Release the retired workers (each with its deadline; here and in .loops) that exited;
    kill one still there past its deadline. The ones still exiting, returned."""
    still = []
    for worker, deadline in retiring:
        if worker.close():
            continue
        if now >= deadline:
            worker.process.kill()
        still.append((worker, deadline))
    return still
