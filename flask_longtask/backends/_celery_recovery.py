"""What a Celery deployment does after Redis went away: lost messages are sent again, and the
ends that could not be written are written once Redis is back.

**Lost messages.** A Celery worker holds the messages it has prefetched (and a retry's, until
its countdown is over) in kombu's ``unacked`` hash in Redis. When its connection drops (a Redis
restart), it drops them, and kombu hands them out again only after its visibility timeout, an
hour by default. Their jobs would stay ``queued`` that long. So the jobs waiting for a worker
are indexed, and a job left queued without a claim for ``LONGTASK_CELERY_REQUEUE_AFTER`` seconds
is published again. Publishing one twice is harmless: only the worker that takes its claim runs
it (:meth:`JobStore.claim <flask_longtask.store.JobStore.claim>`); any other copy is skipped.

The index, :func:`queued_key` (``<prefix>queued``), is a sorted set: member the job id, score
the time (epoch seconds) from which it waits for a worker. A job enters it with its records, in
the same round trip (its record's ``created``), and again when it is queued for a retry (its
``retry_at``: the time its countdown ends), just before its message is sent. It leaves it in the
script that ends the job, and when a pass finds it claimed or over.

A pass runs in each Celery worker's main process, on its watchdog's thread
(:mod:`~flask_longtask.backends._celery_watchdog`), every :func:`interval` seconds. It reads the
:data:`BATCH` oldest entries older than the setting (one ``ZRANGEBYSCORE``), their records and
claims (one ``MGET``), and for each, in one pipeline of :data:`_MOVE` scripts, which move an
entry only if its score is still the one read (so that, of several workers, one acts on it):

* not a job id, a non-finite score, no record, a record that is not a queued job's, or a claim:
  the entry is dropped (what is read back from Redis is validated: anything that can write to
  it can write there);
* a retry whose time is not yet due: its entry moves to its ``retry_at``;
* otherwise its entry moves on, and the job is published again. The entry is due again after
  as long as the job has waited so far (at most :data:`LONGEST`): a job that only waits behind
  a long queue is sent a few times (each copy is skipped), not once per pass.

A retry deletes the claim of the attempt that failed, so a copy of a job's message (one
published again, or one kombu hands out again) could claim the next attempt before its
countdown is over. The worker that claims a job whose record says its retry is not yet due
(:func:`too_early`, with the claim's read) gives the claim back and skips the copy, or, up to
:data:`EARLY_WAIT` seconds early, waits for the due time.

**Ends not written.** A worker whose job ran to its end retries writing that end while Redis is
away (:attr:`CeleryBackend.transient_errors`), for up to ``LONGTASK_HEARTBEAT_TIMEOUT`` seconds,
and then raises :class:`~flask_longtask.OutcomeNotStoredError`. The Celery signal handler that
catches it (or a dead pool process's ``WorkerLostError``, or a forced stop) records the job's
end with :func:`record_end`; when Redis is away that moment too, a thread of that process
(:class:`PendingEnds`) tries again every :data:`RETRY` seconds until Redis answers, for
:data:`KEEP` seconds at most.
"""

from __future__ import annotations

import logging
import math
import os
import threading
import time
import typing as t
import weakref

from ..store import keys
from . import _json
from ._celery_watchdog import TICK, job_id_of

if t.TYPE_CHECKING:  # pragma: no cover
    from .celery import CeleryBackend

_log = logging.getLogger(__name__)

#: Entries one pass looks at, oldest first.
BATCH = 100
#: The longest a job waits between two publications (seconds).
LONGEST = 3600.0
#: Seconds between two tries of the ends a process could not write.
RETRY = 0.25
#: Seconds an end that could not be written is tried again, at most.
KEEP = 24 * 3600.0
#: The most ends one process keeps trying to write.
PENDING_MAX = 10_000
#: Seconds before a retry is due that a copy of its message waits; an earlier copy is skipped.
EARLY_WAIT = 1.0


def queued_key(prefix: str) -> str:
    """The Redis sorted set of the jobs waiting for a worker: job id -> waiting since."""
    return f"{prefix}queued"


def interval(requeue_after: float) -> float:
    """Seconds between two passes of a watchdog: a quarter of the setting, from TICK to 5 s."""
    return min(max(requeue_after / 4, TICK), 5.0)


def index(backend: CeleryBackend, job_id: str, since: float) -> None:
    """(Re)enter job ``job_id`` in the index, waiting from ``since``."""
    backend.redis.zadd(queued_key(backend.prefix), {job_id: since})


def requeue(backend: CeleryBackend, after: float, now: float | None = None) -> list[str]:
    """One pass: publish again the jobs queued without a claim for more than ``after`` seconds
    (at most :data:`BATCH` entries looked at). Returns the ids of the jobs published."""
    now = time.time() if now is None else now
    redis, key = backend.redis, queued_key(backend.prefix)
    entries = t.cast(
        "list[tuple[bytes, float]]", redis.zrangebyscore(key, "-inf", now - after, start=0, num=BATCH, withscores=True)
    )
    looked: list[tuple[str, float]] = []
    for member, score in entries:
        job_id = job_id_of(member)
        if job_id is None or not math.isfinite(score):
            _log.warning("Dropped a malformed entry of the index of queued jobs: %r.", member[:100])
            redis.zrem(key, member)
        else:
            looked.append((job_id, score))
    if not looked:
        return []
    raw = redis.mget([backend.prefix + k for job_id, _ in looked for k in (keys.job(job_id), keys.claim(job_id))])
    moves: list[tuple[str, float, float | None, bool]] = []  # id, score read, new score (None: drop), publish
    for i, (job_id, score) in enumerate(looked):
        record = _record(raw[2 * i])
        if record is None or record.get("status") != "queued" or raw[2 * i + 1] is not None:
            moves.append((job_id, score, None, False))  # over, unknown, or claimed (running, cancelled)
            continue
        since = min(_stamp(record.get("retry_at")) or _stamp(record.get("created")) or score, now + KEEP)
        if since > now - after:  # a retry whose countdown is not over (or a clock ahead of ours)
            moves.append((job_id, score, since, False))
        else:  # due: published again, and due again after as long as it has waited
            moves.append((job_id, score, now + min(now - since, LONGEST) - after, True))
    move = _mover(backend)
    pipe = redis.pipeline(transaction=False)
    for job_id, score, new, _ in moves:
        move(keys=[key], args=[job_id, repr(score), "" if new is None else repr(new)], client=pipe)
    # Those whose move this pass won (another worker's pass may have moved the others first).
    due = [
        (job_id, score)
        for (job_id, score, _, publish), won in zip(moves, pipe.execute(), strict=True)
        if won and publish
    ]
    sent = []
    for n, (job_id, _) in enumerate(due):
        try:
            backend.publish(job_id)
        except Exception:  # (the broker is away): those not sent are due again at the next pass
            redis.zadd(key, dict(due[n:]), xx=True)
            raise
        sent.append(job_id)
    if sent:
        _log.info(
            "Flask-LongTask: %d job(s) waited over %g s with no worker taking them: published again (%s).",
            len(sent),
            after,
            ", ".join(sent[:10]) + (" ..." if len(sent) > 10 else ""),
        )
    return sent


def too_early(backend: CeleryBackend, claim_key: str, claim: t.Any, record: t.Any) -> bool:
    """Whether a worker that has just claimed a job (``claim`` under ``claim_key``) holds a copy
    of its message that came before the job's retry is due: a copy published again, or
    redelivered by kombu, while the retry's own message waits for its countdown. Up to
    :data:`EARLY_WAIT` seconds early, this waits for the due time and says no; earlier, it
    gives the claim back and says yes (the worker skips it: the retry's own message, or a pass
    after it is due, runs it at its time)."""
    if not isinstance(record, dict) or record.get("status") != "queued":
        return False
    retry_at = _stamp(record.get("retry_at"))
    early = 0.0 if retry_at is None else retry_at - time.time()
    if early <= 0.0:
        return False
    if early <= EARLY_WAIT:
        time.sleep(early)
        return False
    backend.delete_if(claim_key, claim)
    _log.info("Job %s: a copy of its message came %.3g s before its retry is due: skipped.", record.get("id"), early)
    return True


def _record(data: object) -> dict[str, t.Any] | None:
    """A job's record as read from Redis, if it is one (a dict): anything else is ``None``."""
    if not isinstance(data, bytes):
        return None
    try:
        record = _json.loads(data)
    except Exception:
        return None
    return record if isinstance(record, dict) else None


def _stamp(value: object) -> float | None:
    """A time read from a record, if it is a finite number of seconds (not a bool)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)


# KEYS: the index. ARGV: the job id, the score read, the new score ("": drop the entry).
# Moves the entry only if its score is still the one read: of several passes, one acts.
_MOVE = """
local score = redis.call('zscore', KEYS[1], ARGV[1])
if not score or tonumber(score) ~= tonumber(ARGV[2]) then return 0 end
if ARGV[3] == '' then redis.call('zrem', KEYS[1], ARGV[1]) else redis.call('zadd', KEYS[1], ARGV[3], ARGV[1]) end
return 1
"""

_movers: weakref.WeakKeyDictionary[CeleryBackend, t.Any] = weakref.WeakKeyDictionary()


def _mover(backend: CeleryBackend) -> t.Any:
    """:data:`_MOVE`, registered on the backend's client (redis-py's Script is untyped)."""
    mover = _movers.get(backend)
    if mover is None:
        mover = _movers[backend] = backend.redis.register_script(_MOVE)
    return mover


# -- ends that could not be written -----------------------------------------------------------


def record_end(
    backend: CeleryBackend,
    job_id: str,
    how: str,
    *,
    attempt: int | None = None,
    error: dict[str, str] | None = None,
) -> None:
    """End job ``job_id`` as its worker saw it end (``mark_lost`` with ``how``, or ``error``),
    now, or once Redis answers again (:class:`PendingEnds`)."""
    from ..worker import mark_lost

    try:
        mark_lost(backend, job_id, how, attempt=attempt, error=error)
    except backend.transient_errors as exc:
        _log.warning(
            "Flask-LongTask: the end of job %s (%s) could not be written (%s: %s); written once Redis is back.",
            job_id,
            how,
            type(exc).__name__,
            exc,
        )
        PendingEnds.of(backend).add(job_id, how, attempt, error)


class PendingEnds:
    """The ends one process could not write, tried again by a thread until Redis is back."""

    _lock = threading.Lock()
    _by_backend: weakref.WeakKeyDictionary[CeleryBackend, PendingEnds] = weakref.WeakKeyDictionary()

    @classmethod
    def of(cls, backend: CeleryBackend) -> PendingEnds:
        with cls._lock:
            pending = cls._by_backend.get(backend)
            if pending is None or pending._pid != os.getpid():  # (forked: the thread is not ours)
                pending = cls._by_backend[backend] = cls(backend)
            return pending

    def __init__(self, backend: CeleryBackend) -> None:
        self.backend = backend
        self._pid = os.getpid()
        self._ends: dict[str, tuple[str, int | None, dict[str, str] | None, float]] = {}
        self._thread: threading.Thread | None = None

    def __len__(self) -> int:
        return len(self._ends)

    def add(self, job_id: str, how: str, attempt: int | None, error: dict[str, str] | None) -> None:
        with self._lock:
            if len(self._ends) >= PENDING_MAX and job_id not in self._ends:
                _log.error("Flask-LongTask: too many ends waiting for Redis; job %s's is dropped.", job_id)
                return
            self._ends[job_id] = (how, attempt, error, time.monotonic() + KEEP)
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="flask-longtask-pending-ends", daemon=True)
                self._thread.start()

    def _run(self) -> None:
        from ..worker import mark_lost

        while True:
            time.sleep(RETRY)
            with self._lock:
                ends = list(self._ends.items())
                if not ends:
                    self._thread = None
                    return
            for job_id, (how, attempt, error, until) in ends:
                try:
                    mark_lost(self.backend, job_id, how, attempt=attempt, error=error)
                except self.backend.transient_errors:
                    if time.monotonic() < until:
                        break  # still away: all of them wait for the next try
                    _log.error("Flask-LongTask: gave up writing the end of job %s (%s).", job_id, how)
                except Exception:
                    _log.exception("Flask-LongTask: could not write the end of job %s (%s).", job_id, how)
                with self._lock:
                    self._ends.pop(job_id, None)
