"""What the pool's host does when something ends that it did not end: a worker's death (it
is reaped, its job failed or requeued, its jobs sent ahead unclaimed), a forced stop at a
cancelled job's deadline, a lost job whose end cannot be written yet, and the jobs a previous
host, or a lost message, left behind in storage. ``docs/internals.md`` has the table of
failures these answer. Each function runs under the host's mutex."""

from __future__ import annotations

import logging
import time
import typing as t

from ...attempts import RETRY_BACKOFF_MAX
from ...job import JobStatus
from ...store import keys
from ...worker import owner_pid
from ..base import MISSING
from .workers import exit_reason

if t.TYPE_CHECKING:  # pragma: no cover
    from . import wire
    from .host import PoolHost
    from .workers import Worker

_log = logging.getLogger(__name__)

#: The periodic rescan (see recover()) queues an unclaimed job nobody told the host of once it
#: is this old (seconds since its submit): a younger one's message may still be on its way.
RESCAN_AGE = 60.0
#: Seconds before a worker starts again after one died as it started (importing the app), doubled
#: with each such death in a row, up to START_BACKOFF_MAX; a job's end starts them at once again.
START_BACKOFF = 0.25
START_BACKOFF_MAX = 30.0
#: What a job's record says while it is not over.
_ACTIVE = (JobStatus.QUEUED.value, JobStatus.RUNNING.value)


def reap(host: PoolHost, worker: Worker, how: str | None, *, killed: str | None = None) -> None:
    """Handle the death of a worker. ``how`` it died, if the pool ended it, to end job
    ``killed``. A storage error on the way (a full disk) leaves no job behind: each is requeued
    or handed to :func:`lost`, which tries again until the job's end is written."""
    worker.process.join()
    host.drain(worker)
    moved = killed is not None and worker.job_id != killed
    if moved:
        # It ended that job just before it was stopped (what it said last came in between),
        # and went on to another: not the one the pool meant to stop.
        how = "its worker process was stopped by force as it ended a cancelled job before it"
    reason = how or worker.reason or exit_reason(worker.process.exitcode)
    # Died as it started (importing the app): it said why (.starting), or it never ended a job,
    # nor claimed the one it had.
    at_start = how is None and not worker.settled and (worker.error is not None or worker.reason is None)
    pid = worker.pid  # (not to be asked once its process object is closed)
    host.workers.remove(worker)
    worker.close()
    # The jobs sent ahead never started: a worker reports the one it claimed as it ended its
    # job before it runs it. Queued again, each in its place, unless ended meanwhile.
    for job_id in worker.ahead:
        if _unclaimed(host, job_id, pid):
            host.queue.requeue(job_id)
        else:
            host.queue.forget(job_id)
            host.ends.add(job_id)
    worker.ahead.clear()
    if worker.job_id is not None:
        job_id = worker.job_id
        host.kills.pop(job_id, None)
        unclaimed = (how is None or moved) and not worker.preclaimed and never_claimed(host, job_id)
        at_start = at_start and (unclaimed or worker.error is not None)
        if job_id in host.later:
            # Its attempt failed and it was queued for a retry before the worker died: the retry
            # stands (it is queued when due, now that the queue forgets it).
            host.queue.forget(job_id)
        elif worker.error is not None:  # it failed as it started, and said why: so does the job
            lost(host, job_id, reason, error=worker.error)
        elif unclaimed and worker.reason is None and job_id not in host.requeued:
            # It died before it took the job (killed from outside, or as it started): the job
            # never started. Once: a second death fails it with how that worker died.
            host.requeued.add(job_id)
            host.queue.requeue(job_id)
        else:
            lost(host, job_id, reason)
    if host.stopping.is_set():
        # The pool is shutting down (a SIGTERM to the whole process group, as systemd stops a
        # service, reaches the workers and the fork server too): no death to report, none to replace.
        _log.debug("Pool worker %s of %s ended as the pool shut down: %s.", pid, host.backend.directory, reason)
    elif at_start:  # the next ones may well die the same way: back off, more each time in a row
        host.respawn_delay = min(max(host.respawn_delay * 2, START_BACKOFF), START_BACKOFF_MAX)
        host.next_spawn = time.monotonic() + host.respawn_delay
        _log.error(
            "A pool worker of %s %s: %s (the next starts in %g s).",
            host.backend.directory,
            "failed as it started (importing the app)" if worker.error else "died before it ran a job",
            reason,
            host.respawn_delay,
        )
    elif how is None and worker.job_id is None:
        # Died idle: do not spin.
        host.respawn_delay = min(max(host.respawn_delay * 2, 0.1), 5.0)
        host.next_spawn = time.monotonic() + host.respawn_delay
        _log.error("A pool worker of %s died while idle: %s.", host.backend.directory, reason)


def start_failed(host: PoolHost, message: wire.StartFailed) -> None:
    """A worker said it fails as it starts (see :mod:`.starting`): the job sent to it, if any,
    fails with that error once its death is seen (:func:`reap`), and nothing more is sent to it."""
    workers = host.workers + host.loops.workers  # (a worker of coroutine jobs too)
    worker = next((w for w in workers if w.pid == message.pid and not w.settled), None)
    if worker is None or worker.reason is not None:
        return  # (not one of ours, or it said something first)
    kind, text = message.error["type"], message.error["message"]
    worker.reason = f"{kind}: {text}"
    worker.error = {
        "type": kind,
        "message": f"{text} (in a pool worker process, as it started: importing the app)",
        "traceback": "",
    }


def left_behind(host: PoolHost, worker: Worker) -> None:
    """As the pool shuts down: end the job a worker ran, and unclaim the jobs sent ahead to it
    (they never started: queued in storage, the next host runs them). Storage errors are
    logged: the next host's first look ends or runs what is left."""
    try:
        if worker.job_id is not None and not never_claimed(host, worker.job_id):
            lost(host, worker.job_id, "the worker pool was shut down while it ran")
        for job_id in worker.ahead:
            _unclaimed(host, job_id, worker.pid)
    except Exception:
        _log.exception("Worker pool of %s: could not record what worker %s left.", host.backend.directory, worker.pid)


def lost(host: PoolHost, job_id: str, how: str, *, error: dict[str, str] | None = None) -> None:
    """End a job whose worker is gone (failed with ``error`` when its worker said why). If its
    end cannot be written now (a full disk), the job stays known and the host tries again each
    tick: it is never forgotten."""
    try:
        host.backend.end_lost(job_id, how, error)
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


def never_claimed(host: PoolHost, job_id: str) -> bool:
    """Whether nobody claimed the job; ``False`` when that cannot be read (it is then ended as
    lost, by :func:`lost`, which tries again until it can)."""
    try:
        return host.backend.get(keys.claim(job_id)) is MISSING
    except Exception:
        _log.exception("Worker pool: could not read the claim of job %s.", job_id)
        return False


def _unclaimed(host: PoolHost, job_id: str, pid: int) -> bool:
    """Remove the claim worker ``pid`` made of a job sent ahead that it never started; whether
    the job may run (it is not claimed by anyone else: a cancel). When storage fails, ``True``:
    the job is queued again, and if that worker's claim stands, the next worker's claim fails,
    and the job is found lost once its heartbeat is overdue."""
    key = keys.claim(job_id)
    try:
        claim = host.backend.get(key)
        if claim is MISSING:
            return True
        return owner_pid(claim) == pid and host.backend.delete_if(key, claim)
    except Exception:
        _log.exception("Worker pool: could not unclaim job %s, sent ahead to a worker that died.", job_id)
        return True


def run_kills(host: PoolHost) -> None:
    now = time.time()
    for job_id, deadline in list(host.kills.items()):
        if host.loops.runs(job_id):  # a coroutine job's own thread owns its deadline (see .loops)
            del host.kills[job_id]
            continue
        worker = next((w for w in host.workers if w.job_id == job_id), None)
        if worker is None:
            if job_id not in host.queue:  # not ours, or already over
                del host.kills[job_id]
            continue
        if deadline <= now:
            del host.kills[job_id]
            # It may have ended the job just now, and gone on to one sent ahead.
            host.read_messages(worker)
            if worker.job_id != job_id or not _still_cancelled(host, job_id):
                continue
            worker.process.kill()
            reap(host, worker, "it was stopped by force after cancellation", killed=job_id)


def _still_cancelled(host: PoolHost, job_id: str) -> bool:
    """Whether the job's cancel flag is still up. A job retried after its time limit runs its
    next attempt under the same id, with the flag taken down: the forced stop asked for the
    attempt before is not for this one. ``True`` when it cannot be read (stop it)."""
    try:
        return host.backend.get(keys.cancel(job_id)) is not MISSING
    except Exception:
        return True


def rescan(host: PoolHost, *, first: bool = False) -> None:
    """Queue the jobs nobody runs, read from storage. The ``first`` time, also end those the
    previous host was running (claimed, never ended). Later (every ``cleanup_interval``), queue
    the unclaimed jobs older than :data:`RESCAN_AGE` that are not in the queue or on a worker: a
    message lost on the way, a submit whose process died between its writes and its message, a
    job a storage error left behind. A retry still waiting out its backoff (``retry_at`` in its
    record) is put aside until then instead.

    Storage is read without the host's mutex (a directory of many finished jobs takes a while);
    only the changes take it.
    """
    backend = host.backend
    claims = set(backend.scan(keys.claim("")))
    unclaimed: list[tuple[float, str]] = []
    abandoned: list[str] = []
    later: list[tuple[str, float]] = []
    coroutines: set[str] = set()  # (those whose record says so: see .loops)
    now = time.time()
    for key in backend.scan(keys.JOB_PREFIX):
        job_id = keys.job_id(key)
        is_claimed = keys.claim(job_id) in claims
        if is_claimed and not first:
            continue  # (most jobs: read only the few that may wait)
        record = backend.get(key)
        if record is MISSING or record["status"] not in _ACTIVE:
            continue
        if not is_claimed and record["status"] == JobStatus.QUEUED.value:
            if record.get("coroutine") is True:
                coroutines.add(job_id)
            retry_at = record.get("retry_at")
            if isinstance(retry_at, (int, float)) and retry_at > now:
                # A retry waiting out its backoff (never longer than a backoff can be: a record
                # rewritten to park a job for ever is not believed).
                later.append((job_id, min(float(retry_at), now + RETRY_BACKOFF_MAX * 1.25)))
            elif first or now - record["created"] > RESCAN_AGE:
                unclaimed.append((record["created"], job_id))
        elif first:
            abandoned.append(job_id)
    with host.mutex:
        busy = {job_id for worker in host.workers for job_id in (worker.job_id, *worker.ahead)}
        busy |= host.loops.running()
        for job_id, due in later:
            if job_id not in busy and job_id not in host.queue and job_id not in host.later:
                host.later.add(job_id, due, coroutine=job_id in coroutines)
        for job_id in abandoned:  # claimed by a worker of the dead host, which never ended it
            if job_id not in busy and job_id not in host.queue:
                lost(host, job_id, "the process hosting the worker pool died")
        found = [
            job_id
            for _, job_id in sorted(unclaimed)
            if job_id not in busy and not host.queue.waiting(job_id) and job_id not in host.later
        ]
        for job_id in found:
            if job_id in host.queue:  # known, but left behind by a storage error: in its place
                host.queue.requeue(job_id)
            else:  # in the order they were submitted (a submit meanwhile pushes its own after)
                host.queue.push(job_id, coroutine=job_id in coroutines)
    if found:
        _log.info("Worker pool of %s: queued %d waiting job(s).", backend.directory, len(found))
