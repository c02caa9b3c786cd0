"""Where a new job goes: straight to a worker, or into the queue.

In the process hosting the pool, a job goes straight to a worker that can take it (a sync job to
an idle worker: :mod:`.handoff`; a coroutine job to a free slot of a loop worker: :mod:`.loops`),
claimed for it in the transaction that stores it. Elsewhere, or when no worker can take it, the
job is stored with its listing entry and queued: to the host's queue in its own process, through
the FIFO from any other (:meth:`DiskcacheBackend.enqueue`).

:func:`many` stores a batch (``Task.submit_many``: up to 200 jobs) in one transaction: the writes of every job,
their listing entries, and the claims of those that go straight to a loop worker's free slots;
then it queues the rest. A batch of sync jobs is queued whole: its jobs go to idle workers from
the queue, since :mod:`.handoff`'s reservation holds an idle worker for one job's transaction.
"""

from __future__ import annotations

import typing as t

from . import handoff, loops, starting

if t.TYPE_CHECKING:  # pragma: no cover
    from ..base import NewJob
    from . import DiskcacheBackend
    from .host import PoolHost


def one(backend: DiskcacheBackend, job: NewJob) -> None:
    """Store and queue ``job`` (:meth:`~flask_longtask.backends.base.Backend.store_and_enqueue`)."""
    starting.refuse_submit()  # (not in a worker importing the script: see .starting)
    pool = _direct(backend)
    submit = loops.submit if job.request.task.is_coroutine else handoff.submit
    if not (pool is not None and submit(backend, pool, job)):
        backend.table.write_all(job.writes, entries=(job.entry,))  # (and its listing entry: see .index)
        job.announce()
        backend.enqueue(job.request)


def many(backend: DiskcacheBackend, jobs: t.Sequence[NewJob]) -> None:
    """Store ``jobs`` in one transaction and queue them (``Task.submit_many``)."""
    starting.refuse_submit()
    pool = _direct(backend)
    if pool is not None and jobs and jobs[0].request.task.is_coroutine:  # (a batch is of one task)
        queued = loops.submit_many(backend, pool, jobs)
    else:
        backend.table.write_all([write for job in jobs for write in job.writes], entries=[job.entry for job in jobs])
        for job in jobs:
            job.announce()
        queued = jobs
    for job in queued:
        backend.enqueue(job.request)


def _direct(backend: DiskcacheBackend) -> PoolHost | None:
    """The pool host in this process, if a new job may go straight to its workers: it is not
    stopping, and the submit is not inside a caller's batch (whose commit comes later)."""
    pool = backend._host
    if pool is None or pool.stopping.is_set() or backend.table.in_batch:
        return None
    return pool
