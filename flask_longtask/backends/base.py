"""The backend interface.

A backend **stores** small records under string keys and **runs** jobs somewhere else by
calling :func:`flask_longtask.worker.execute`. Every job semantic -- statuses, progress,
results, errors, cancellation, memoization, single-flight and signals -- is written once, in the
core, over these primitives: a store with get/set/add/delete/scan and a queue with
:meth:`Backend.enqueue` make a complete backend.

Three hooks see whole job steps instead of keys, so that a backend can do a step its own way
without reading meaning back out of key names: :meth:`Backend.store_and_enqueue` receives a
:class:`NewJob`, :meth:`Backend.end_job` a :class:`JobEnd`, and :meth:`Backend.wait` is one look
of a waiter. Their defaults do each step with the primitives; a backend overrides one to save a
round trip (the Celery backend sends a new job's records with its task message), to wake waiters
when a job ends (Redis lists), or to hand work to a worker directly (the diskcache pool). They
change how a step is done, never what it means: that stays in the core. A custom backend
implements the abstract methods below and proves itself with :mod:`flask_longtask.testing`.
"""

from __future__ import annotations

import abc
import contextlib
import logging
import pickle
import threading
import time
import typing as t
from dataclasses import dataclass, replace

from .entry import JobEntry as JobEntry
from .entry import JobQuery as JobQuery
from .entry import Tally as Tally

if t.TYPE_CHECKING:  # pragma: no cover
    from flask import Flask

    from ..task import Task

_log = logging.getLogger(__name__)


class _Missing:
    """The type of :data:`MISSING`; ``None`` is a legitimate stored value, so absence is not."""

    _instance: _Missing | None = None

    def __new__(cls) -> _Missing:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "<MISSING>"

    def __bool__(self) -> bool:
        return False

    def __reduce__(self) -> str:
        return "MISSING"


#: Returned by :meth:`Backend.get` for a key that is absent or expired.
MISSING: t.Final = _Missing()


@dataclass(frozen=True)
class JobRequest:
    """What :meth:`Backend.enqueue` receives for one submitted job.

    ``job_id`` and ``task_name`` are all an out-of-process backend needs to send: the arguments
    are already in storage under ``request:<job_id>``. ``task`` and ``app`` are the live objects
    in the submitting process; an in-process backend may hand them straight to
    :func:`~flask_longtask.worker.execute` and skip the lookup by name.
    """

    job_id: str
    task_name: str
    task: Task[..., t.Any]
    app: Flask


#: One write of :meth:`Backend.write_all`, :meth:`Backend.add_then_write`, a :class:`NewJob` or a
#: :class:`JobEnd`:
#: ``("set", key, value, expire)``, ``("delete", key, None, None)`` or
#: ``("delete_if", key, value, None)`` (delete only if the key holds ``value``).
Write = tuple[str, str, t.Any, "float | None"]


@dataclass(frozen=True)
class NewJob:
    """A submitted job, as :meth:`Backend.store_and_enqueue` receives it.

    The core has checked its arguments, its memo key and the queue limit; what is left is to
    store it and queue it.
    """

    #: What :meth:`Backend.enqueue` takes (job id, task name, live task and app).
    request: JobRequest
    #: Its ``"job:<id>"`` record, status ``"queued"``.
    record: dict[str, t.Any]
    #: Its ``"request:<id>"`` record: ``task``, ``module``, ``app`` and ``args`` (bytes).
    arguments: dict[str, t.Any]
    #: Both, as writes, in the order to store them (the request first: a worker that finds the
    #: record finds the request too).
    writes: tuple[Write, ...]
    #: Sends ``job_submitted``: call it once the writes are stored, and before the job can
    #: start if it runs in this process (its ``job_started`` would be sent here too). A job run
    #: by another process may have started already: its ``job_started`` is sent there.
    announce: t.Callable[[], None]

    @property
    def id(self) -> str:
        """The job's id."""
        return self.request.job_id

    @property
    def entry(self) -> JobEntry:
        """What a listing index keeps of it (status ``"queued"``): store it with ``writes``."""
        return JobEntry.of(self.record)


@dataclass(frozen=True)
class JobEnd:
    """The end of a job, as :meth:`Backend.end_job` receives it: its end claim, its final
    records, and (when the job's runner ends it) the "cancelled" end written instead if its
    cancel flag is set.

    Exactly one process ends a job's attempt: whoever adds ``key`` first (a retry takes the
    same key with :meth:`Backend.add_then_write`, and queues the next attempt, which has its
    own). With ``unless``, the check of that key (the job's cancel flag) is part of the same
    atomic step.
    """

    job_id: str
    #: A :class:`~flask_longtask.JobStatus` value: what ``writes`` end the job as.
    status: str
    #: The end claim's key, added atomically: of the attempt that ends (``"end:<id>"`` for the
    #: first, ``"end:<id>:<n>"`` for attempt ``n``); a backend takes it as it comes.
    key: str
    #: The end claim's value: when the job ended (``time.time()``).
    at: float
    #: The end claim's expiry, in seconds.
    expire: float | None
    #: The result, the final record, the memo entry, the release of single-flight.
    writes: tuple[Write, ...]
    #: A key (the cancel flag): when it exists, ``otherwise`` is written instead of ``writes``.
    unless: str | None = None
    #: The "cancelled" end's writes.
    otherwise: tuple[Write, ...] = ()
    #: The job's listing entry as ``writes`` end it (see :meth:`ended`); ``None`` when the core
    #: made this end without one (a backend then leaves its index as it is).
    entry: JobEntry | None = None

    def ended(self, chosen: bool) -> JobEntry | None:
        """The job's listing entry once it has ended this way (``chosen``: ``writes`` were
        applied, else ``otherwise``, which ends it "cancelled"): update the index with it, in the
        same atomic step as the end."""
        if self.entry is None or chosen:
            return self.entry
        return replace(self.entry, status=_CANCELLED)

    def values(self, chosen: bool) -> dict[str, t.Any]:
        """``{key: value}`` of the sets applied: of ``writes`` if ``chosen``, else of ``otherwise``
        (what a waiter would read once the job has ended this way)."""
        return {key: value for op, key, value, _ in (self.writes if chosen else self.otherwise) if op == "set"}

    def cancelled(self, chosen: bool) -> bool:
        """Whether the job ends "cancelled" that way (``chosen``: ``writes`` were applied)."""
        return self.status == _CANCELLED if chosen else True


_CANCELLED = "cancelled"  # JobStatus.CANCELLED (job.py imports this module: no import back)


class Backend(abc.ABC):
    """Stores job state and runs jobs.

    **Storage.** Keys are short strings (``"job:<id>"``, ``"progress:<id>"`` ...) chosen by the
    core; a backend may prefix them for its own namespace. Values are plain data: ``None``,
    ``bool``, ``int``, ``float``, ``str``, ``bytes``, and ``list``/``dict`` of those. User values
    (arguments, results, progress) reach storage already serialised to ``bytes`` by
    :meth:`dumps`. Stored values are never mutated after :meth:`set`. ``expire`` is in seconds;
    ``None`` means "keep until deleted". Every method must be safe to call from several threads,
    and, for a backend shared across processes, from several processes at once.

    **Execution.** :meth:`enqueue` arranges for the job to run elsewhere, once, by calling
    :func:`flask_longtask.worker.execute` with this backend (or an equivalent backend instance in
    another process). Jobs start in submission order when the backend has a queue.
    """

    #: Whether :meth:`terminate` can stop a running job that ignores the cancel flag.
    can_terminate: t.ClassVar[bool] = False
    #: Whether :meth:`store_and_enqueue_many` stores a batch of new jobs all or none (else the
    #: core stores a batch's jobs one by one, and knows which were queued if one fails).
    stores_batches: t.ClassVar[bool] = False

    #: The exceptions of this backend's calls that mean "storage (or the queue) is away for a
    #: moment" (a Redis restart). A worker that ran a job to its end and gets one of these while
    #: it writes that end tries again, for up to ``LONGTASK_HEARTBEAT_TIMEOUT`` seconds, then
    #: raises :class:`~flask_longtask.OutcomeNotStoredError` (see
    #: :func:`~flask_longtask.worker.execute`). Default: none, nothing is tried again.
    transient_errors: t.ClassVar[tuple[type[Exception], ...]] = ()

    # -- serialisation --------------------------------------------------------------------------

    def dumps(self, value: t.Any) -> bytes:
        """Serialise a user value (arguments, result, progress) to bytes.

        Raise any exception for a value this backend cannot carry; the core turns it into a
        clear error that names the argument, or a failed job for a result. The default is pickle.
        """
        return pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)

    def loads(self, data: bytes) -> t.Any:
        """Inverse of :meth:`dumps`."""
        return pickle.loads(data)

    # -- storage --------------------------------------------------------------------------------

    @abc.abstractmethod
    def get(self, key: str) -> t.Any:
        """Return the value stored under ``key``, or :data:`MISSING`."""

    def get_many(self, keys: t.Sequence[str]) -> list[t.Any]:
        """The values of several keys, :data:`MISSING` for absent ones, in one round trip if the
        store can (the worker reads a job's record, request and cancel flag this way)."""
        return [self.get(key) for key in keys]

    @abc.abstractmethod
    def set(self, key: str, value: t.Any, expire: float | None = None) -> None:
        """Store ``value`` under ``key``, replacing any old value and its expiry."""

    @abc.abstractmethod
    def add(self, key: str, value: t.Any, expire: float | None = None) -> bool:
        """Store ``value`` only if ``key`` is absent; return whether it was stored.

        This must be atomic across every thread and process sharing the backend: it is the one
        primitive behind claiming a job exactly once and single-flight memoization.
        """

    @abc.abstractmethod
    def delete(self, key: str) -> None:
        """Remove ``key``; no error if it is absent."""

    def delete_if(self, key: str, value: t.Any) -> bool:
        """Remove ``key`` only if it holds ``value``; return whether it did.

        Must be atomic like :meth:`add` (it releases single-flight keys). The default does it in
        one :meth:`batch`, which is atomic on a backend whose batches are transactions;
        override it otherwise.
        """
        with self.batch():
            if self.get(key) != value:
                return False
            self.delete(key)
            return True

    def claim_and_get(
        self, key: str, value: t.Any, expire: float | None, keys: t.Sequence[str]
    ) -> tuple[bool, list[t.Any]]:
        """:meth:`add` ``key`` and :meth:`get_many` ``keys``, in one round trip if the store can.

        A worker claims a job and reads what it needs to run it this way. Only the claim must be
        atomic: the values may be read before it (the diskcache backend does, outside its write
        lock), as nothing read here changes once a job is claimed but its cancel flag, which the
        running job sees later. The default does both in one :meth:`batch`.
        """
        with self.batch():
            return self.add(key, value, expire), self.get_many(keys)

    def add_then_write(
        self,
        key: str,
        value: t.Any,
        expire: float | None,
        writes: t.Sequence[Write],
        *,
        unless: str | None = None,
        otherwise: t.Sequence[Write] = (),
    ) -> bool | None:
        """Atomically: if ``key`` is absent, :meth:`add` it and apply ``writes`` -- or, when the
        key ``unless`` exists, ``otherwise`` instead.

        Returns ``None`` if ``key`` was present (nothing written), ``True`` if ``writes`` were
        applied, ``False`` if ``otherwise`` was. The default :meth:`end_job` ends a job this way:
        the end claim, the check of its cancel flag and its final records in one step; a retry
        ends a failed attempt and queues the next one this way too. Must be atomic like
        :meth:`add`; the default does it in one :meth:`batch` (atomic when batches are
        transactions, otherwise override it, as the Redis backend does with a script).
        """
        with self.batch():
            if not self.add(key, value, expire):
                return None
            chosen = unless is None or self.get(unless) is MISSING
            self.write_all(writes if chosen else otherwise)
            return chosen

    def write_all(self, writes: t.Sequence[Write]) -> None:
        """Apply ``writes`` (see :data:`Write`) in one :meth:`batch`."""
        with self.batch():
            for op, key, value, expire in writes:
                if op == "set":
                    self.set(key, value, expire)
                elif op == "delete":
                    self.delete(key)
                elif op == "delete_if":
                    self.delete_if(key, value)
                else:  # pragma: no cover - the core only makes these three
                    raise ValueError(f"Unknown write {op!r}.")

    def batch(self) -> t.ContextManager[None]:
        """Group the storage calls made inside into one transaction, if the backend can.

        The core wraps each step of a job (submit, claim and start, finish) in one batch, so a
        store whose every write is a transaction (SQLite) pays once per step, not per key.
        Batches may nest. The default groups nothing.
        """
        return contextlib.nullcontext()

    @abc.abstractmethod
    def scan(self, prefix: str) -> t.Iterator[str]:
        """Yield every live key that starts with ``prefix`` (any order; used for listings)."""

    # -- execution ------------------------------------------------------------------------------

    def store_and_enqueue(self, job: NewJob) -> None:
        """Write a new job's records, call ``job.announce()``, and :meth:`enqueue` it.

        The default does exactly that, in that order: the ``job_submitted`` signal (``announce``)
        comes before the job can start. A backend may overlap the writes with the enqueue to save
        a round trip (the Celery backend sends its writes and the task message together, then
        reads the replies); its workers must then wait briefly for a job's record that is not
        there yet, and it calls ``announce()`` once both are done. Raise if either fails: the
        core then removes the job's records.
        """
        self.write_all(job.writes)
        job.announce()
        self.enqueue(job.request)

    def store_and_enqueue_many(self, jobs: t.Sequence[NewJob]) -> None:
        """Store and queue several new jobs of one task (``Task.submit_many``), each as
        :meth:`store_and_enqueue` would, **all or none**: raise only if none is stored.

        Called only on a backend whose :attr:`stores_batches` is true; the core calls
        :meth:`store_and_enqueue` for each job on the others. A backend that can write them
        all at once (one transaction) should: that is the point of a batch.
        """
        raise NotImplementedError(f"{type(self).__name__} sets stores_batches but has no store_and_enqueue_many.")

    def end_job(self, end: JobEnd) -> bool | None:
        """End a job: atomically add ``end.key`` and apply ``end.writes``, or ``end.otherwise``
        when the key ``end.unless`` (the cancel flag) exists.

        Returns ``None`` if the job had been ended already by someone else (nothing written),
        ``True`` if ``end.writes`` were applied, ``False`` if ``end.otherwise`` was. The default
        is :meth:`add_then_write`. A backend overrides it to act on a job's end in the same step:
        wake the job's waiters (the Celery backend pushes to a Redis list they block on), or
        give its worker the next job (the diskcache pool).
        """
        return self.add_then_write(end.key, end.at, end.expire, end.writes, unless=end.unless, otherwise=end.otherwise)

    def wait(self, job_id: str, keys: t.Sequence[str], *, timeout: float, elapsed: float) -> list[t.Any]:
        """One look of ``Job.wait``: the values of ``keys`` once job ``job_id`` may have ended,
        or after at most ``timeout`` seconds.

        ``keys[0]`` is the job's record; the values come in the order asked, :data:`MISSING` for
        absent ones. ``timeout`` may be ``math.inf``: the backend then picks how long to block
        before it looks again. ``elapsed`` is the time since the wait began: ``0.0`` on its first
        look, which must answer at once for a job that has ended. The caller interprets the
        values (claims, heartbeats, lost workers) and calls again while the job is active and
        time is left, so returning early is always correct, only wasteful.

        The default polls: it reads at once on the first look; later, it sleeps 0.25 ms while
        ``elapsed`` is under 10 ms (short jobs end within a few), then ``elapsed / 10`` up to
        50 ms, never longer than ``timeout``, and reads. A backend that hears of a job's end
        blocks until then instead (the Celery backend in Redis, the diskcache pool's host), and
        may answer from what the end wrote without reading storage.
        """
        if elapsed > 0.0 and timeout > 0.0:
            time.sleep(min(0.00025 if elapsed < 0.01 else min(0.05, elapsed / 10), timeout))
        return self.get_many(keys)

    def forget(self, job_id: str) -> None:
        """Remove what this backend stores for job ``job_id`` besides the core's keys: its
        listing entry, if it keeps an index.

        ``flask longtask purge`` calls it for each finished job it deletes, after the core's
        keys of the job (:meth:`keys.of_job <flask_longtask.store.Keys.of_job>`); a submit that
        could not queue its job, after removing its records. The default does nothing; the
        Celery backend also deletes the Redis list its waiters block on.
        """

    # -- listing --------------------------------------------------------------------------------

    def list_jobs(self, query: JobQuery) -> list[str]:
        """The ids of the jobs whose listing entry matches ``query``, newest first (ids sort by
        their submit time: see :func:`~flask_longtask.newjobs.new_job_id`), at most
        ``query.limit``, all sorting before ``query.before`` if given.

        An entry is what :class:`JobEntry` says: ``"queued"`` until the job ends. The core reads
        the records of the ids returned and keeps those that say what was asked (queued or
        running), so an id that is gone (expired, purged) may be returned. An entry expires with
        the job's final record (:attr:`JobEntry.expire`), and :meth:`forget` removes it.

        The default reads every job record (:meth:`scan` and :meth:`get_many`): correct on any
        store, and slow with many jobs. A backend keeps an index instead, updated in the same
        atomic step as a job's records: :meth:`store_and_enqueue` adds :attr:`NewJob.entry`,
        :meth:`end_job` applies :meth:`JobEnd.ended`.
        """
        from ..keys import keys

        ids = sorted((keys.job_id(key) for key in self.scan(keys.JOB_PREFIX)), reverse=True)
        if query.before is not None:
            ids = [job_id for job_id in ids if job_id < query.before]
        found: list[str] = []
        for start in range(0, len(ids), 200):
            chunk = ids[start : start + 200]
            for job_id, record in zip(chunk, self.get_many([keys.job(job_id) for job_id in chunk]), strict=True):
                if isinstance(record, dict) and query.matches(JobEntry.of({**record, "id": job_id})):
                    found.append(job_id)
                    if len(found) >= query.limit:
                        return found
        return found

    def count_jobs(self) -> dict[str, int]:
        """How many live listing entries have each status (``"queued"`` counts running jobs
        too); statuses without any may be left out.

        The default reads every job record; a backend with an index counts its entries.
        """
        from ..keys import keys

        counts: dict[str, int] = {}
        names = [key for key in self.scan(keys.JOB_PREFIX)]
        for start in range(0, len(names), 200):
            for record in self.get_many(names[start : start + 200]):
                if isinstance(record, dict):
                    status = str(record.get("status"))
                    counts[status] = counts.get(status, 0) + 1
        return counts

    @abc.abstractmethod
    def enqueue(self, request: JobRequest) -> None:
        """Arrange for the job to run once, off the caller's thread, and return at once.

        Raise if the job cannot be queued (broker down, queue full): the core then removes the
        job's records and re-raises, so nothing is left half-submitted.
        """

    def enqueue_after(self, request: JobRequest, delay: float) -> None:
        """Run the job again ``delay`` seconds from now: a retry (its records say "queued" again,
        its claim is gone). Called by the process that ran the failed attempt.

        The default starts a timer in this process that calls :meth:`enqueue`: if the process
        exits first, the retry is lost until something queues the job again. Backends with a
        durable queue override it (the pool keeps the delay in its host and finds it again in
        storage; Celery sends the task with a countdown).
        """
        timer = threading.Timer(delay, self._enqueue_later, (request,))
        timer.daemon = True
        timer.start()

    def _enqueue_later(self, request: JobRequest) -> None:
        try:
            self.enqueue(request)
        except Exception:  # (a timer thread: nobody to raise to)
            _log.exception("Could not queue job %s again for its retry.", request.job_id)

    def queue_length(self) -> int | None:
        """How many jobs wait to start, or ``None`` if this backend cannot tell cheaply.

        Used to enforce ``LONGTASK_MAX_QUEUED``; a backend returning ``None`` is never refused.
        """
        return None

    def job_tallies(self) -> list[Tally] | None:
        """What the jobs that ended add up to, by task, status and duration bucket (the metrics'
        counters: :mod:`flask_longtask.metrics`), or ``None`` if this backend keeps no tallies
        (the default).

        A backend that keeps them adds :func:`~flask_longtask.backends.entry.tally_of` of
        ``end.ended(chosen)`` to them in the same atomic step as :meth:`end_job`'s writes, so
        that they are current the moment a job has ended, in every process; and never lowers
        them (purges and expiry leave them as they are)."""
        return None

    def worker_count(self) -> int | None:
        """How many workers run jobs, or ``None`` if this backend cannot tell here (for
        :meth:`LongTask.counts <flask_longtask.LongTask.counts>`)."""
        return None

    def terminate(self, job_id: str, grace: float) -> None:
        """Stop a running job by force if it is still running ``grace`` seconds from now.

        Called after the core has set the job's cancel flag, and only for a job that a worker
        has already claimed. A backend that can stop work (processes, Celery) ends it and then
        calls :func:`flask_longtask.worker.mark_lost` so the job is recorded as cancelled. The
        default does nothing: cancellation is cooperative.

        The deadline must outlive the caller, which may exit as soon as this returns (``flask
        longtask cancel``, a script) or be the job's own process (its time limit): hand it to
        the side that runs the job (the diskcache pool's host, a Celery worker's watchdog), not
        to a timer of the caller's.
        """

    @classmethod
    def from_app(cls, app: Flask) -> Backend:
        """Make an instance configured from ``app.config`` (for ``LONGTASK_BACKEND``)."""
        return cls()

    def init_app(self, app: Flask) -> None:
        """Called once for each app the backend is registered on. Optional."""

    def close(self) -> None:
        """Release threads, processes and connections. Optional; idempotent."""


__all__ = ["MISSING", "Backend", "JobEnd", "JobEntry", "JobQuery", "JobRequest", "NewJob", "Tally", "Write"]
