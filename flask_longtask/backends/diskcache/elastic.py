"""The pool's size: it grows for jobs that wait, and shrinks when workers stay idle.

``workers`` processes are kept warm; ``max_workers`` is the ceiling. Once a tick (the host's
``TICK``), and only while every worker is busy and jobs wait, the host reads what each worker
asks of the CPU (:func:`demand`: ``/proc/<pid>/schedstat`` and ``/proc/<pid>/stat``) and compares
it with the previous tick's reading. A worker that used less than :data:`WAITING_BELOW` of a CPU
meanwhile is *waiting* (its job sleeps, or blocks in I/O); one that used more is *burning*. (At
the first look, a settled worker is judged by whether its main thread sleeps at that moment.)
The pool then starts more workers (:func:`growth`): one per job waiting when every worker waits;
else as many as are waiting, or up to the CPUs that no burning or unjudged worker may be using;
within the ceiling; never one while the burning workers fill the CPUs, so CPU-bound work is not
spread over more processes than CPUs. A worker judged waiting is sent no job ahead
(:data:`~.host.AHEAD`): the queued job stays in the queue, for the next free worker or the one
being started.

A worker above ``workers`` that has had no job for ``worker_idle`` seconds is *retired*: under the
host's mutex, while it has nothing sent ahead, nothing in its pipe and no waiter reading it, the
host takes it out of the pool and closes its pipe and lifeline; it exits at once, and its exit is
not a death (nothing to fail, no replacement, no back-off). ``docs/internals.md`` says more.
"""

from __future__ import annotations

import logging
import os
import time
import typing as t

from .child import CPUS
from .workers import close

if t.TYPE_CHECKING:  # pragma: no cover
    from .host import PoolHost
    from .workers import Worker

_log = logging.getLogger(__name__)

#: A worker whose job used less than this share of one CPU over the last tick is waiting. (The
#: workers of a flood of no-op jobs use 0.6-0.7 each on 2 CPUs, waiting for SQLite's lock and the
#: host: more of them would not help; a job that sleeps or waits on the network, a few hundredths.)
WAITING_BELOW = 0.3
#: Seconds after its start before a worker's CPU is read: it is importing the app meanwhile.
STARTING = 0.2
#: Seconds after its start from which a worker is judged at the first look by what its job does
#: at that moment (sleeping or not), rather than two ticks later by its CPU in between.
SETTLED = 1.0
#: Seconds a job has run before a first look may judge its worker waiting because it sleeps.
FIRST_LOOK = 0.05
#: Seconds a retired worker has to exit before it is killed (it has no job: it exits at once).
RETIRE_WAIT = 1.0
#: Clock ticks per second of ``/proc/<pid>/stat``'s ``utime`` and ``stime``.
_CLK_TCK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def ceiling(workers: int, max_workers: int | None) -> int:
    """The most workers the pool may run: ``max_workers``, by default four per CPU this process
    may use; never below ``workers``."""
    return max(workers, max_workers or 4 * CPUS)


def demand(pid: int) -> tuple[float, bool] | None:
    """Seconds of CPU the process ``pid`` has asked for so far, and whether its main thread (the
    job's) sleeps right now; ``None`` where this cannot be read (not Linux: the pool then never
    grows). The seconds are the larger of two counts: its main thread's time on a CPU plus its
    time waiting for one (``schedstat``: a job that burns CPU on a crowded machine asks for a
    whole CPU even when it gets half of one), and the CPU time of all its threads (``stat``: a
    job whose threads do the work while the main thread waits for them)."""
    main = total = None
    sleeping = False
    try:
        fd = os.open(f"/proc/{pid}/schedstat", os.O_RDONLY)
        try:
            run, delay = os.read(fd, 128).split()[:2]
        finally:
            os.close(fd)
        main = (int(run) + int(delay)) / 1e9
    except (OSError, ValueError):
        pass
    try:
        fd = os.open(f"/proc/{pid}/stat", os.O_RDONLY)
        try:
            fields = os.read(fd, 1024).rpartition(b")")[2].split()  # (after the command's name)
        finally:
            os.close(fd)
        total = (int(fields[11]) + int(fields[12])) / _CLK_TCK  # utime, stime
        sleeping = fields[0] in (b"S", b"D")  # (R: on a CPU or waiting for one)
    except (OSError, ValueError, IndexError):
        pass
    if main is None:
        return None if total is None else (total, sleeping)
    return (main if total is None else max(main, total)), sleeping


def growth(shares: t.Sequence[float], *, unknown: int, cpus: int, room: int, queued: int) -> int:
    """How many workers to start, given the CPU ``shares`` of the busy workers judged this tick
    (each in CPUs), how many busy workers are too new to be judged (``unknown``), the ``cpus``
    this process may use, the ``room`` under the ceiling and the jobs ``queued``.

    None while the burning workers fill the CPUs, or none is judged yet. When every worker is
    judged and waits, one for each job waiting: the CPUs are idle, and the jobs are presumed like
    the running ones. Else as many as are waiting (the waiting part doubles each tick), or as many
    as fill the CPUs that neither the burning nor the unknown workers may be using (a pool smaller
    than the CPUs grows to them with work that burns CPU), whichever is more; within the ceiling."""
    burning = sum(share >= WAITING_BELOW for share in shares)
    waiting = len(shares) - burning
    if not shares or burning >= cpus or room <= 0 or queued <= 0:
        return 0
    if burning == 0 and unknown == 0:
        return min(room, queued)
    return min(room, queued, max(waiting, cpus - burning - unknown))


class Elastic:
    """The elastic part of one pool host: the readings of its workers' CPU, and the workers it
    retired that have not exited yet. Its methods run in the dispatcher, under the host's mutex."""

    def __init__(self, size: int, max_size: int, idle: float) -> None:
        #: How many workers are kept warm, the ceiling, and the idle time that retires the others.
        self.size, self.max_size, self.idle = size, max_size, idle
        #: Retired workers not yet seen to exit, with the time (monotonic) they are killed at.
        self.retiring: list[tuple[Worker, float]] = []
        #: Whether workers carry readings (or judgements) of a tick during which all were busy.
        self._marked = False

    def tick(self, host: PoolHost, now: float) -> bool:
        """Once a tick, after the dispatch (a worker that was just done has its next job): end
        the retired workers that exited, retire idle ones, and start more while every worker is
        busy waiting and jobs are queued; whether it started any."""
        if self.max_size == self.size:
            return False  # a fixed pool: nothing to read, nothing to start or retire
        if self.retiring:
            self._reap(now)
        if len(host.workers) > self.size:
            self._retire_idle(host, now)
        if self._saturated(host):
            return self._grow(host, now)
        if self._marked:
            self._marked = False
            for worker in host.workers:
                worker.mark, worker.waiting = None, None
        return False

    @staticmethod
    def _saturated(host: PoolHost) -> bool:
        """Whether every worker has a job and more wait: in the queue, or sent ahead."""
        workers = host.workers
        if not workers or not (host.queue or any(worker.ahead for worker in workers)):
            return False
        return all(worker.job_id is not None for worker in workers)

    def _grow(self, host: PoolHost, now: float) -> bool:
        """Judge each worker by its CPU since the last tick, and start more if :func:`growth` says
        so; whether it started any. (It judges at the ceiling too: a worker judged waiting is sent
        no job ahead.)"""
        self._marked = True
        shares = []
        first: list[tuple[Worker, bool]] = []  # (looked at for the first time, and sleeping)
        for worker in host.workers:
            if now - worker.started < STARTING:
                continue  # (it imports the app: its first interval says nothing of its job)
            read = demand(worker.pid)
            if read is None:
                continue
            used, sleeping = read
            worker.mark, mark = (used, now), worker.mark
            if mark is None or now <= mark[1]:
                # The first look: what its job does right now. Not for a young worker (it may be
                # waiting for a lock as it starts), nor a sleeping one whose job has just started
                # (it may be writing its claim): those are measured at the next tick.
                if now - worker.started >= SETTLED and not (sleeping and now - worker.given < FIRST_LOOK):
                    first.append((worker, sleeping))
                continue
            share = (used - mark[0]) / (now - mark[1])
            worker.waiting = share < WAITING_BELOW
            shares.append(share)
        # A job that burns CPU sleeps for moments too (its end, a lock): a sleeping worker counts
        # as waiting at the first look only when every worker looked at for the first time
        # sleeps; else it is measured at the next tick, and a running one counts as burning.
        everyone = all(sleeping for _, sleeping in first)
        for worker, sleeping in first:
            if sleeping == everyone:
                worker.waiting = sleeping
                shares.append(0.0 if sleeping else 1.0)
        room = self.max_size - len(host.workers)
        unknown = len(host.workers) - len(shares)
        count = growth(shares, unknown=unknown, cpus=CPUS, room=room, queued=host.queued()) if room > 0 else 0
        started = 0
        while started < count and now >= host.next_spawn:  # (workers that die as they start: back off)
            host.add_worker()
            started += 1
        if started:
            _log.debug("Worker pool of %s: %d more workers for waiting jobs.", host.backend.directory, started)
        return started > 0

    def _retire_idle(self, host: PoolHost, now: float) -> None:
        idle: list[Worker] = []
        for worker in host.workers:
            if not worker.idle or worker.watched or worker.eof:
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
            close(worker.conn)
            close(worker.lifeline)  # it exits at once (its lifeline thread: os._exit(0))
            self.retiring.append((worker, now + RETIRE_WAIT))
            _log.debug("Worker pool of %s: retired idle worker %s.", host.backend.directory, worker.pid)

    def _reap(self, now: float) -> None:
        """Release the retired workers that exited; kill one that has not within its time."""
        still = []
        for worker, deadline in self.retiring:
            process = worker.process
            if process.exitcode is not None:
                process.close()
                continue
            if now >= deadline:
                process.kill()
            still.append((worker, deadline))
        self.retiring = still

    def shutdown(self) -> None:
        """As the pool shuts down: wait for the retired workers that are still exiting."""
        deadline = time.monotonic() + RETIRE_WAIT
        for worker, _ in self.retiring:
            worker.process.join(max(0.0, deadline - time.monotonic()))
            if worker.process.exitcode is None:
                worker.process.kill()
                worker.process.join(5)
            if worker.process.exitcode is not None:
                worker.process.close()
        self.retiring = []
