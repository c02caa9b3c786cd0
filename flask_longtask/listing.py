"""Listing jobs, counting them and purging the finished ones, over a backend's listing index (:meth:`Backend.list_jobs
<flask_longtask.backends.Backend.list_jobs>`): the one place that says what a listing means.

A backend's index knows each job by its :class:`~flask_longtask.backends.base.JobEntry`:
``"queued"`` until the job ends, its final status after. Whether a job not yet ended is queued
or running (claimed by a worker), and whether a running one was lost, only its record and claim
say: this module reads them for every such job it lists, through
:meth:`JobStore.read_record <flask_longtask.store.JobStore.read_record>`, so that a listing says
exactly what ``job.status`` says.
"""

from __future__ import annotations

import math
import re
import typing as t
from dataclasses import replace
from datetime import datetime

from .attempts import MAX_RETRIES, attempt_of
from .backends.base import MISSING, JobQuery
from .exceptions import JobNotFoundError
from .job import JobStatus
from .store import keys

if t.TYPE_CHECKING:  # pragma: no cover
    from .store import JobStore

#: The most jobs one listing call returns.
MAX_LIMIT: t.Final = 1000
#: The longest task name or owner a listing accepts (longer ones match no job anyway).
MAX_NAME: t.Final = 1000
#: How a job id looks (:func:`~flask_longtask.newjobs.new_job_id`): 32 lowercase hex digits.
JOB_ID: t.Final = re.compile(r"[0-9a-f]{32}")
_ACTIVE = frozenset({JobStatus.QUEUED.value, JobStatus.RUNNING.value})
_FINISHED = frozenset(status.value for status in JobStatus if status.is_finished)
#: Ids read at a time while looking for queued or running jobs among the entries not ended.
_CHUNK = 200


def query(
    *,
    status: JobStatus | str | None = None,
    task: str | None = None,
    owner: str | None = None,
    since: datetime | float | None = None,
    before: str | None = None,
    limit: int = 100,
) -> tuple[JobQuery, JobStatus | None]:
    """Check a listing's arguments; the backend's query, and the status the records must say.

    :raises TypeError: an argument of the wrong type.
    :raises ValueError: an unknown status, a limit out of ``1..MAX_LIMIT``, a non-finite time.
    """
    wanted = None
    if status is not None:
        try:
            wanted = JobStatus(status)
        except ValueError:
            names = ", ".join(repr(s.value) for s in JobStatus)
            raise ValueError(f"status must be one of {names} or None, not {status!r}.") from None
    for name, value in (("task", task), ("owner", owner), ("before", before)):
        if value is not None and not isinstance(value, str):
            raise TypeError(f"{name} must be a string or None, not {value!r}.")
        if value is not None and len(value) > MAX_NAME:
            raise ValueError(f"{name} is longer than {MAX_NAME} characters.")
    if isinstance(limit, bool) or not isinstance(limit, int):
        raise TypeError(f"limit must be a whole number, not {limit!r}.")
    if not 1 <= limit <= MAX_LIMIT:
        raise ValueError(f"limit must be from 1 to {MAX_LIMIT}, not {limit}.")
    stamp = None
    if isinstance(since, datetime):
        stamp = since.timestamp()  # (a naive datetime is local time, as datetime.timestamp() reads it)
    elif since is not None:
        if isinstance(since, bool) or not isinstance(since, (int, float)):
            raise TypeError(f"since must be a datetime, epoch seconds or None, not {since!r}.")
        if not math.isfinite(since):
            raise ValueError(f"since must be a finite time, not {since!r}.")
        stamp = float(since)
    # Running jobs are "queued" in the index: a claim does not touch it.
    entry_status = None if wanted is None else (JobStatus.QUEUED.value if wanted.value in _ACTIVE else wanted.value)
    return JobQuery(entry_status, task, owner, stamp, before, limit), wanted


def find(store: JobStore, backend_query: JobQuery, wanted: JobStatus | None) -> list[dict[str, t.Any]]:
    """The records of the jobs ``backend_query`` finds whose status is ``wanted`` (any, if
    ``None``), newest first: at most ``backend_query.limit``.

    The backend's index answers the query; each id is then read: a job not yet ended through
    :meth:`~flask_longtask.store.JobStore.read_record` (queued or running, a lost one ended
    here), the others as stored. An id whose record is gone is left out; a page may need more
    than one look at the index when records say otherwise than their entries (queued or
    running, or gone).
    """
    found: list[dict[str, t.Any]] = []
    limit, cursor = backend_query.limit, backend_query.before
    refine = wanted is not None and wanted.value in _ACTIVE
    while len(found) < limit:
        ask = max(limit - len(found), _CHUNK if refine else 0)
        ids = store.backend.list_jobs(replace(backend_query, before=cursor, limit=min(ask, MAX_LIMIT)))
        for record in read(store, ids):
            if wanted is None or record["status"] == wanted.value:
                found.append(record)
                if len(found) == limit:
                    break
        if len(ids) < min(ask, MAX_LIMIT):
            break
        cursor = ids[-1]
    return found


def read(store: JobStore, ids: t.Sequence[str]) -> list[dict[str, t.Any]]:
    """The records of ``ids``, in order, as ``job.status`` would say them; gone ones left out."""
    records = []
    values = store.backend.get_many([keys.job(job_id) for job_id in ids]) if ids else []
    for job_id, record in zip(ids, values, strict=True):
        if record is MISSING or not isinstance(record, dict):
            continue
        if record.get("status") in _ACTIVE:
            try:
                record = store.read_record(job_id)  # claimed: running; no heartbeat: lost
            except JobNotFoundError:
                continue
        records.append(record)
    return records


def counts(store: JobStore) -> dict[str, int]:
    """How many jobs have each status, from the backend's index; ``queue_length`` and
    ``workers`` where the backend knows them.

    The finished statuses are counted by the index. The jobs not yet ended are told apart by
    their claims, read for each of them (a few reads per thousand jobs queued or running).
    """
    backend = store.backend
    stored = backend.count_jobs()
    result = {status.value: 0 for status in JobStatus}
    for status in JobStatus:
        if status.is_finished:
            result[status.value] = stored.get(status.value, 0)
    cursor = None
    while True:
        ids = backend.list_jobs(JobQuery(JobStatus.QUEUED.value, before=cursor, limit=MAX_LIMIT))
        claims = backend.get_many([keys.claim(job_id) for job_id in ids]) if ids else []
        running = sum(1 for claim in claims if isinstance(claim, dict) and claim.get("by") != "cancel")
        result[JobStatus.RUNNING.value] += running
        result[JobStatus.QUEUED.value] += len(ids) - running
        if len(ids) < MAX_LIMIT:
            break
        cursor = ids[-1]
    queued = backend.queue_length()
    if queued is not None:
        result["queue_length"] = queued
    workers = backend.worker_count()
    if workers is not None:
        result["workers"] = workers
    return result


def purge(store: JobStore) -> int:
    """Delete every finished job (each key of its, its memo entry if it still names it, and
    what the backend keeps for it: :meth:`~flask_longtask.backends.Backend.forget`), then what
    has expired (the backend's ``cleanup``, if it has one); how many jobs were deleted.

    It reads every job record (:meth:`~flask_longtask.backends.Backend.scan`), not the index:
    jobs stored before the backend kept one are purged too.
    """
    backend = store.backend
    count = 0
    for key in backend.scan(keys.JOB_PREFIX):
        record = backend.get(key)
        if record is MISSING or not isinstance(record, dict) or record.get("status") not in _FINISHED:
            continue
        job_id = keys.job_id(key)
        # One end claim per attempt it ran (as many as a task may allow, whatever storage says).
        for name in keys.of_job(job_id, min(attempt_of(record), 1 + MAX_RETRIES)):
            backend.delete(name)
        backend.forget(job_id)
        if record.get("memo_key"):  # the memo entry, if it still names this job
            backend.delete_if(keys.memo(record["memo_key"]), job_id)
        count += 1
    cleanup = getattr(backend, "cleanup", None)
    if cleanup is not None:
        cleanup()
    return count
