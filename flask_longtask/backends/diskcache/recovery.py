"""What the pool's host does when something ends that it did not end: a worker's death (it
is reaped, its job failed or requeued, its jobs sent ahead unclaimed), a forced stop at a
cancelled job's deadline, a lost job whose end cannot be written yet, and the jobs a previous
host, or a lost message, left behind in storage. ``docs/internals.md`` has the table of
failures these answer. Each function runs under the host's mutex."""

from __future__ import annotations

import logging
import time
import typing as t

from ...job import JobStatus
from ...store import keys
from ...worker import owner_pid
from ..base import MISSING
from .workers import exit_reason

if t.TYPE_CHECKING:  # pragma: no cover
    from .host import PoolHost
    from .workers import Worker

_log = logging.getLogger(__name__)

#: The periodic rescan (see recover()) queues an unclaimed job nobody told the host of once it
#: is this old (seconds since its submit): a younger one's message may still be on its way.
RESCAN_AGE = 5.0


def reap(host: PoolHost, worker: Worker, how: str | None, *, killed: str | None = None) -> None:
    """Handle the death of a worker. ``how`` it died, if the pool ended it, to end job
    ``killed``."""
    worker.process.join()
    host.drain(worker)
    moved = killed is not None and worker.job_id != killed
    if moved:
        # It ended that job just before it was stopped (what it said last came in between),
        # and went on to another: not the one the pool meant to stop.
        how = "its worker process was stopped by force as it ended a cancelled job before it"
    reason = how or worker.reason or exit_reason(worker.process.exitcode)
    pid = worker.pid
    host.workers.remove(worker)
    worker.close()
    # The jobs sent ahead never started: a worker reports the one it claimed as it ended its
    # job before it runs it. Queued again, each in its place, unless ended meanwhile.
    for job_id in worker.ahead:
        if unclaim(host, job_id, pid):
            host.queue.requeue(job_id)
        else:
            host.queue.forget(job_id)
            host.ends.add(job_id)
    worker.ahead.clear()
    if worker.job_id is not None:
        job_id = worker.job_id
        host.kills.pop(job_id, None)
        if (
            (how is None or moved)
            and worker.reason is None
            and not worker.preclaimed
            and job_id not in host.requeued
            and not claimed(host, job_id)
        ):
            # It died before it took the job (killed from outside): the job never started.
            host.requeued.add(job_id)
            host.queue.requeue(job_id)
        else:
            lost(host, job_id, reason)
    elif how is None:
        # Died idle, most often at start-up (an import error in __main__): do not spin.
        host.respawn_delay = min(max(host.respawn_delay * 2, 0.1), 5.0)
        host.next_spawn = time.monotonic() + host.respawn_delay
        _log.error("A pool worker of %s died while idle: %s.", host.backend.directory, reason)


def lost(host: PoolHost, job_id: str, how: str) -> None:
    """End a job whose worker is gone. If its end cannot be written now (a full disk), the
    job stays known and the host tries again each tick: it is never forgotten."""
    try:
        host.backend._lost(job_id, how)
    except Exception:
        if job_id not in host.unrecorded:
            _log.exception("Worker pool: job %s lost (%s), but its end could not be written yet.", job_id, how)
        host.unrecorded[job_id] = how
        return
    host.unrecorded.pop(job_id, None)
    host.queue.forget(job_id)
    host.ends.add(job_id)


def record_lost(host: PoolHost) -> None:
    for job_id, how in list(host.unrecorded.items()):
        lost(host, job_id, how)


def claimed(host: PoolHost, job_id: str) -> bool:
    return host.backend.get(keys.claim(job_id)) is not MISSING


def unclaim(host: PoolHost, job_id: str, pid: int) -> bool:
    """Remove the claim worker ``pid`` made of a job sent ahead that it never started;
    whether the job may run (it is not claimed by anyone else: a cancel)."""
    key = keys.claim(job_id)
    claim = host.backend.get(key)
    if claim is MISSING:
        return True
    return owner_pid(claim) == pid and host.backend.delete_if(key, claim)


def run_kills(host: PoolHost) -> None:
    now = time.time()
    for job_id, deadline in list(host.kills.items()):
        worker = next((w for w in host.workers if w.job_id == job_id), None)
        if worker is None:
            if job_id not in host.queue:  # not ours, or already over
                del host.kills[job_id]
            continue
        if deadline <= now:
            del host.kills[job_id]
            # It may have ended the job just now, and gone on to one sent ahead.
            host.read_messages(worker)
            if worker.job_id != job_id:
                continue
            worker.process.kill()
            reap(host, worker, "it was stopped by force after cancellation", killed=job_id)


def recover(host: PoolHost, *, first: bool = False) -> None:
    """Queue the jobs nobody runs. The ``first`` time, also end those the previous host was
    running. Later (every ``cleanup_interval``), queue the unclaimed jobs older than
    :data:`RESCAN_AGE` that nobody told the host of: a message lost on the way, or a submit
    whose process died between its writes and its message."""
    backend = host.backend
    running_here = {worker.job_id for worker in host.workers if worker.job_id is not None}
    found: list[tuple[float, str]] = []
    for key in backend.scan(keys.JOB_PREFIX):
        job_id = keys.job_id(key)
        if job_id in host.queue or job_id in running_here or job_id in host.unrecorded:
            continue
        record = backend.get(key)
        if record is MISSING:
            continue
        status = record["status"]
        if status not in (JobStatus.RUNNING.value, JobStatus.QUEUED.value):
            continue
        if backend.get(keys.claim(job_id)) is MISSING and status == JobStatus.QUEUED.value:
            if first or time.time() - record["created"] > RESCAN_AGE:
                found.append((record["created"], job_id))
        elif first:  # claimed by a worker of the dead host (it never ended it)
            lost(host, job_id, "the process hosting the worker pool died")
    for _, job_id in sorted(found):
        host.queue.push(job_id)
    if found:
        _log.info("Worker pool of %s: queued %d waiting job(s).", backend.directory, len(found))
