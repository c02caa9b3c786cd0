"""The hand-over: a job submitted in the host's process goes straight to an idle worker.

In the process hosting the pool, with a worker idle, :func:`submit` writes the job's records
and the claim for that worker in one transaction. The worker gets the job
(:class:`~.wire.Handover`: its record and request) while the transaction is written, so that its
wake-up and its preparation overlap the commit; it starts the job only on the
:class:`~.wire.Go` sent after the commit (``N`` if the commit failed: then nothing ran). Its
own writes (the job's end, its heartbeat) queue behind the writers' lock this transaction holds.
The worker runs the job without a claim or a read of its own.

    submit ─ reserve(worker) ─ encode ─ writers' lock ─ hand_over: Handover ─ INSERTs ─ unlock ─ go: Go(True)
                 │                                        (records, listing entry: COMMIT) ─ (fails) ─ go: Go(False)
                 │                                                                     ─ unreserve ─ raise
                 └ (no idle worker, jobs waiting, the dispatcher busy) ─ the queue
"""

from __future__ import annotations

import time
import typing as t

from ...store import CLAIM_EXPIRE, keys
from . import wire

if t.TYPE_CHECKING:  # pragma: no cover
    from ..base import NewJob
    from . import DiskcacheBackend
    from .host import PoolHost
    from .workers import Worker

#: Arguments up to this size (bytes, serialised) go to the worker with the job, which then fits
#: in a pipe's buffer (a submit never waits for the worker to read); larger ones it reads from
#: storage.
INLINE_ARGS = 32 * 1024
#: Seconds a submit waits for the dispatcher's mutex to hand its job to an idle worker directly
#: (the dispatcher holds it for a step: a few hundred microseconds, longer for a sweep); past
#: that, the job goes through the queue.
RESERVE_WAIT = 0.05


def submit(backend: DiskcacheBackend, host: PoolHost, job: NewJob) -> bool:
    """Store ``job`` and hand it to an idle worker of ``host``, in this process; ``False``
    (nothing done) when no worker is idle: the caller stores and queues it instead."""
    worker = reserve(host, job.id)
    if worker is None:
        return False
    from ...worker import owner_of

    started = time.time()
    claim = {"by": owner_of(worker.pid, 0), "at": started}
    arguments = job.arguments
    message = wire.Handover(job.id, started, job.record, arguments if len(arguments["args"]) <= INLINE_ARGS else None)
    handed = False

    def hand_over_locked() -> None:  # under the writers' lock: the worker's writes wait for the commit
        nonlocal handed
        handed = hand_over(host, worker, job.id, message)

    claim_write = ("set", keys.claim(job.id), claim, max(CLAIM_EXPIRE, job.record["expire"]))
    try:
        backend.table.write_all([*job.writes, claim_write], locked=hand_over_locked, entries=(job.entry,))
    except BaseException:
        if handed:
            go(host, worker, False)
        unreserve(host, worker, job.id)
        raise
    if not handed or not go(host, worker, True):
        # The worker died after it was reserved: the job is claimed for a process that is gone.
        # (If its death is handled after the commit, the pool fails the job too.)
        backend.end_lost(job.id, "its worker process died before it could start the job")
    # The signal after the go: job_started is sent in the worker's process, once the job is
    # stored, so no receiver here can see the two out of order.
    job.announce()
    return True


def reserve(host: PoolHost, job_id: str) -> Worker | None:
    """Take an idle worker for a job submitted in this process, before its records are
    written. ``None`` when no worker is idle, jobs are waiting (they go first), or the
    dispatcher is busy."""
    if host.queue or all(worker.job_id is not None for worker in host.workers):
        return None  # at a glance, without waiting for the mutex (looked at again under it)
    if not host.mutex.acquire(timeout=RESERVE_WAIT):  # busy for longer: take the queue
        return None
    try:
        if host.queue or host.inbox or host.stopping.is_set():
            return None
        for worker in host.workers:
            if worker.idle:
                worker.job_id, worker.given, worker.handing = job_id, time.monotonic(), True
                host.queue.know(job_id)
                return worker
        return None
    finally:
        host.mutex.release()


def hand_over(host: PoolHost, worker: Worker, job_id: str, message: wire.Handover) -> bool:
    """Send a reserved worker its (claimed) job; ``False`` if that worker is gone already.
    The worker prepares the job, then waits for :func:`go`."""
    # No lock (the dispatcher may be busy for a while): flag first, then look. The host's reap
    # removes a dead worker first and reads the flag after, so either it sees the flag and
    # fails the job, or we see the worker gone and the caller does.
    worker.preclaimed = True
    if worker not in host.workers or worker.job_id != job_id:
        return False
    worker.send(message)  # (if it is dying, the sentinel fires and the reap fails the job)
    return True


def go(host: PoolHost, worker: Worker, start: bool) -> bool:
    """Tell a worker that was handed a job whether to start it (its records are stored) or
    drop it (they could not be); ``False`` if that worker is gone."""
    worker.given = time.monotonic()  # it starts now (for the waiters' spin)
    try:
        if not worker.send(wire.Go(start)):
            return False
    finally:
        # Jobs may be sent ahead from now on; after an "N", only once unreserve() has made it
        # idle (ahead of a job it drops, one would run with the pool unaware).
        worker.handing = not start
    return worker in host.workers


def unreserve(host: PoolHost, worker: Worker, job_id: str) -> None:
    """Give back a worker :func:`reserve` took, for a job whose records could not be written."""
    with host.mutex:
        if worker.job_id == job_id:
            worker.job_id = None
            worker.preclaimed = worker.handing = False
        host.queue.forget(job_id)
    host.wake()  # jobs may have queued meanwhile
