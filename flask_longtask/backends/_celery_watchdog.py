"""The forced stop of a Celery job, enforced by the worker that runs it.

:meth:`CeleryBackend.terminate <flask_longtask.backends.celery.CeleryBackend.terminate>` is
asked to stop a job by force once a grace period has passed: after a cancel of a running job,
or by the job's own pool process when its time limit passes. The caller may exit at once (``flask
longtask cancel``, a script, a web worker being recycled) or be the very process to be stopped,
so no timer of the caller's can own the deadline. It is written to Redis instead, in one sorted
set per backend, :func:`deadlines_key` (``<prefix>forced-stops``): member the job id, score the
deadline in epoch seconds; and ``terminate`` returns.

A :class:`Watchdog` thread runs in each Celery worker's main process (started on
``worker_ready``; prefork pool only, as no other pool can stop a running task). Every
:data:`TICK` seconds it reads the deadlines of the jobs *its* pool runs (Celery's own list of
active requests: one round trip, none while it runs no job of ours). For a job whose deadline
has passed and whose record still says it is active, it revokes the task with ``terminate=True``
and SIGKILL, addressed to its own worker alone: the worker's event loop kills the pool process
and reports the task revoked (Celery's own path, on its own thread), and the backend's
``task_revoked`` handler records the job cancelled (or failed at its time limit). The entry is
then moved :data:`RETRY` seconds on, so that a control message lost on its way is sent again
while the job still runs.

Why this worker alone, and not a broadcast from any watchdog: N workers do not all revoke the
same job, an idle worker costs Redis nothing, and the job is stopped beside it, by the process
that knows which pool process runs it.

The set stays small: every :data:`SWEEP` seconds each watchdog drops the due entries whose job
is over (the usual end of an entry: its job was stopped, or ended by itself meanwhile), and
entries that are malformed (anything that can write Redis can write them, so what is read back
is validated: a job id of 32 hex digits, a finite score). Each write of a deadline drops entries
more than :data:`KEEP` seconds past their deadline (a job on a worker that cannot stop it, such
as a ``solo`` one, keeps its entry that long at most) or absurdly far ahead, and makes the whole
set expire :data:`KEEP` seconds after its newest deadline.

The same thread runs the passes that publish again the jobs whose message was lost (a Redis
restart: :mod:`~flask_longtask.backends._celery_recovery`), on every pool: those need no forced
stop, so a worker that cannot stop a task (``stops=False``) runs them alone.
"""

from __future__ import annotations

import logging
import math
import threading
import time
import typing as t

from ..store import keys
from . import _json

if t.TYPE_CHECKING:  # pragma: no cover
    from .celery import CeleryBackend

_log = logging.getLogger(__name__)

#: Seconds between two looks of a watchdog at the deadlines of the jobs its worker runs.
TICK = 0.25
#: Seconds after which a job revoked by force that still runs is revoked again.
RETRY = 1.0
#: Seconds between two sweeps of the whole set by a watchdog (ended jobs, malformed entries).
SWEEP = 5.0
#: Seconds an entry outlives its deadline at most; the set expires this long after its newest one.
KEEP = 24 * 3600.0
#: Due entries one sweep looks at, oldest first.
BATCH = 100

_ACTIVE = ("queued", "running")
_HEX = frozenset("0123456789abcdef")


def deadlines_key(prefix: str) -> str:
    """The Redis sorted set of the deadlines of a backend's forced stops."""
    return f"{prefix}forced-stops"


def job_id_of(value: object) -> str | None:
    """``value`` as a job id, if it is one (32 lowercase hex digits, as the core makes them);
    ``None`` for anything else: what is read back from Redis is not trusted."""
    if isinstance(value, bytes):
        try:
            value = value.decode("ascii")
        except UnicodeDecodeError:
            return None
    if isinstance(value, str) and len(value) == 32 and _HEX.issuperset(value):
        return value
    return None


def deadline_of(value: object) -> float | None:
    """``value`` as a deadline, if it is a finite number of seconds (Redis allows +-inf)."""
    if not isinstance(value, (int, float, str, bytes)) or isinstance(value, bool):
        return None
    try:
        deadline = float(value)
    except ValueError:
        return None
    return deadline if math.isfinite(deadline) else None


def schedule(backend: CeleryBackend, job_id: str, deadline: float) -> None:
    """Record (or move) job ``job_id``'s deadline, in one round trip that also bounds the set."""
    key = deadlines_key(backend.prefix)
    now = time.time()
    pipe = backend.redis.pipeline(transaction=False)
    pipe.zadd(key, {job_id: deadline})
    # Past KEEP, or further ahead than any grace: left by a worker that could not stop its job,
    # or written by something else.
    pipe.zremrangebyscore(key, "-inf", f"({now - KEEP}")
    pipe.zremrangebyscore(key, f"({now + KEEP}", "+inf")
    pipe.expire(key, math.ceil(KEEP + max(deadline - now, 0.0)))
    pipe.execute()


class Watchdog:
    """Enforces the deadlines of the jobs one Celery worker runs (see the module's docstring).

    :param backend: the backend whose jobs the worker runs.
    :param hostname: the worker's node name, to address the revoke to it alone.
    :param task_name: the Celery task that runs a job (its id is the job's id).
    :param stops: whether it enforces forced stops (the prefork pool, with remote control);
        either way it publishes lost messages again (``backend.requeue_after``).
    """

    def __init__(self, backend: CeleryBackend, hostname: str, task_name: str, *, stops: bool = True) -> None:
        self.backend = backend
        self.hostname = hostname
        self.task_name = task_name
        self.stops = stops
        self._next_requeue = 0.0
        self.key = deadlines_key(backend.prefix)
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="flask-longtask-watchdog", daemon=True)
        self._next_sweep = 0.0
        self._next_log = 0.0

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stopping.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout)

    @property
    def running(self) -> bool:
        return self._thread.is_alive() and not self._stopping.is_set()

    def _run(self) -> None:
        while not self._stopping.wait(TICK):
            try:
                self.check()
            except Exception:  # Redis away, a failover: log (once a minute) and look again next tick
                now = time.monotonic()
                if now >= self._next_log:
                    self._next_log = now + 60.0
                    _log.exception(
                        "Flask-LongTask watchdog of %s: could not check forced stops and queued jobs;"
                        " trying again every %s s.",
                        self.hostname,
                        TICK,
                    )

    def check(self) -> None:
        """One look: stop the jobs of this worker whose deadline has passed; sweep now and then;
        publish the jobs whose message was lost again, every few seconds."""
        now = time.time()
        if self.stops:
            here = self.running_here()
            if here:
                self._stop_due(here, now)
            if time.monotonic() >= self._next_sweep:
                self._next_sweep = time.monotonic() + SWEEP
                self._sweep(now)
        after = self.backend.requeue_after
        if after is not None and time.monotonic() >= self._next_requeue:
            from . import _celery_recovery as recovery

            self._next_requeue = time.monotonic() + recovery.interval(after)
            recovery.requeue(self.backend, after, now)

    def running_here(self) -> list[str]:
        """The ids of the jobs this worker's pool runs now, as its main process knows them."""
        from celery.worker import state

        for _ in range(3):
            try:
                requests = list(state.active_requests)
            except RuntimeError:  # changed while we copied it: the worker's event loop runs beside us
                continue
            return [r.id for r in requests if getattr(r, "name", None) == self.task_name and job_id_of(r.id)]
        return []

    def _stop_due(self, job_ids: list[str], now: float) -> None:
        redis = self.backend.redis
        pipe = redis.pipeline(transaction=False)
        for job_id in job_ids:
            pipe.zscore(self.key, job_id)
        due = []
        for job_id, score in zip(job_ids, pipe.execute(), strict=True):
            deadline = deadline_of(score)
            if deadline is not None and deadline <= now:
                due.append(job_id)
            elif score is not None and deadline is None:
                redis.zrem(self.key, job_id)  # (an infinite deadline is nobody's)
        if not due:
            return
        for job_id, active in zip(due, self._active(due), strict=True):
            if not active:  # it ended just now (a revoke could hit the next task of its process)
                redis.zrem(self.key, job_id)
                continue
            _log.info("Job %s is still running past its forced stop's deadline: stopping its process.", job_id)
            self.backend.celery.control.revoke(job_id, destination=[self.hostname], terminate=True, signal="SIGKILL")
            schedule(self.backend, job_id, now + RETRY)

    def _sweep(self, now: float) -> None:
        redis = self.backend.redis
        entries = t.cast(
            "list[tuple[bytes, float]]", redis.zrangebyscore(self.key, "-inf", now, start=0, num=BATCH, withscores=True)
        )
        valid: list[str] = []
        for member, score in entries:
            job_id = job_id_of(member)
            if job_id is None or deadline_of(score) is None:
                _log.warning("Dropped a malformed forced stop from Redis: %r.", member[:100])
                redis.zrem(self.key, member)
            else:
                valid.append(job_id)
        over = [job_id for job_id, active in zip(valid, self._active(valid), strict=True) if not active]
        if over:
            redis.zrem(self.key, *over)

    def _active(self, job_ids: list[str]) -> list[bool]:
        """Whether each job is still to be stopped: its record says it is queued or running, and
        its cancel flag is up (a job retried after its time limit runs its next attempt under the
        same id with the flag taken down: the stop was for the attempt before). A record that
        cannot be read (expired, or not ours to read) counts as over: nothing of it is left."""
        if not job_ids:
            return []
        prefix = self.backend.prefix
        raw = self.backend.redis.mget(
            [prefix + key for job_id in job_ids for key in (keys.job(job_id), keys.cancel(job_id))]
        )
        return [_is_active(raw[2 * i]) and raw[2 * i + 1] is not None for i in range(len(job_ids))]


def _is_active(data: object) -> bool:
    if not isinstance(data, bytes):
        return False
    try:
        record = _json.loads(data)
    except Exception:
        return False
    return isinstance(record, dict) and record.get("status") in _ACTIVE


__all__ = ["Watchdog", "deadline_of", "deadlines_key", "job_id_of", "schedule"]
