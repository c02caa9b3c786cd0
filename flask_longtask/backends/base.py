"""The backend interface.

A backend does two things and decides nothing: it **stores** small records under string keys,
and it **runs** jobs somewhere else by calling :func:`flask_longtask.worker.execute`. Every job
semantic -- statuses, progress, results, errors, cancellation, memoization, single-flight and
signals -- is written once, in the core, over these primitives. A custom backend implements the
abstract methods below and proves itself with :mod:`flask_longtask.testing`.
"""

from __future__ import annotations

import abc
import collections.abc
import contextlib
import pickle
import time
import typing as t
from dataclasses import dataclass

if t.TYPE_CHECKING:  # pragma: no cover
    from flask import Flask

    from ..task import Task


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


#: One write of :meth:`Backend.write_all` and :meth:`Backend.add_then_write`:
#: ``("set", key, value, expire)``, ``("delete", key, None, None)`` or
#: ``("delete_if", key, value, None)`` (delete only if the key holds ``value``).
Write = tuple[str, str, t.Any, "float | None"]


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
    #: Whether :meth:`wait_for_end` returns as soon as a job ends, whichever process ends it and
    #: whichever waits. ``Job.wait`` then blocks in it for up to a second at a time instead of
    #: polling. It may be a property, true in some processes only (the diskcache backend's, in
    #: the process hosting its pool).
    ends_wake_waiters: bool = False
    #: With :attr:`ends_wake_waiters`: the longest ``Job.wait`` blocks in :meth:`wait_for_end`
    #: before it reads the job's status again (for an end that did not wake it: a lost worker).
    recheck_interval: float = 1.0

    def tracks_end(self, job_id: str) -> bool:
        """Whether this process follows job ``job_id`` itself: it will be woken when the job
        ends (the job is queued or running here), or it ended moments ago and this process holds
        what its end wrote.

        With :attr:`ends_wake_waiters`, ``Job.wait`` then skips its first read of the job and
        blocks in :meth:`wait_then_get_many` at once, which for a job that has ended answers from
        what its end wrote, without reading storage (the diskcache pool's host, for the jobs of
        its pool). A wrong ``True`` costs a waiter up to :attr:`recheck_interval`. The default
        is ``False``: a wait starts with a read.
        """
        return False

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
        applied, ``False`` if ``otherwise`` was. A job ends this way: the end claim, the check of
        its cancel flag and its final records in one step. Must be atomic like :meth:`add`; the
        default does it in one :meth:`batch` (atomic when batches are transactions, otherwise
        override it, as the Redis backend does with a script).
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

    def wait_for_end(self, job_id: str, timeout: float) -> t.Mapping[str, t.Any] | None:
        """Block for up to ``timeout`` seconds, or less once job ``job_id`` may have ended.

        :meth:`Job.wait <flask_longtask.Job.wait>` reads the job's status between calls, so a
        backend that cannot tell simply sleeps (the default). One that sees its jobs end (the
        diskcache pool host, in its own process) returns as soon as this one has, which saves a
        waiter the rest of its polling interval. A job ends with :meth:`add_then_write` on the
        key ``end:<job_id>``: a store that can block on a key (Redis) wakes its waiters from
        there, and sets :attr:`ends_wake_waiters`.

        It may return what the job's end wrote, as ``{key: value}`` of the sets of that
        :meth:`add_then_write` (its ``writes``, or ``otherwise`` if that was chosen), when it was
        handed them (the diskcache pool's workers send them with their "done"): the waiter then
        reads nothing. Return ``None`` otherwise (the default).
        """
        time.sleep(timeout)
        return None

    def wait_then_get_many(self, job_id: str, timeout: float, keys: t.Sequence[str]) -> list[t.Any]:
        """:meth:`wait_for_end`, then :meth:`get_many`: how ``Job.wait`` waits and looks again.

        A backend whose wait is a request to its store can send both at once (the Redis backend
        pipelines its blocking wait with the read), so a waiter learns of the end in one round
        trip. The default calls one after the other, or, when :meth:`wait_for_end` returns what
        the job's end wrote and that includes ``keys[0]`` (the core asks for the job's record
        first), answers from it: the record and the result as the end wrote them, ``MISSING``
        for the rest (a claim or a heartbeat, which mean nothing once the job has ended).
        """
        ended = self.wait_for_end(job_id, timeout)
        if isinstance(ended, collections.abc.Mapping) and keys and keys[0] in ended:
            return [ended.get(key, MISSING) for key in keys]
        return self.get_many(keys)

    @abc.abstractmethod
    def scan(self, prefix: str) -> t.Iterator[str]:
        """Yield every live key that starts with ``prefix`` (any order; used for listings)."""

    # -- execution ------------------------------------------------------------------------------

    def store_and_enqueue(self, writes: t.Sequence[Write], request: JobRequest, announce: t.Callable[[], None]) -> None:
        """Write a new job's records, call ``announce()``, and :meth:`enqueue` it.

        The default does exactly that, in that order: the ``job_submitted`` signal (``announce``)
        comes before the job can start. A backend may overlap the writes with the enqueue to save
        a round trip (the Celery backend sends its writes and the task message together, then
        reads the replies); its workers must then wait briefly for a job's record that is not
        there yet, and it calls ``announce()`` once both are done. Raise if either fails: the
        core then removes the job's records.
        """
        self.write_all(writes)
        announce()
        self.enqueue(request)

    @abc.abstractmethod
    def enqueue(self, request: JobRequest) -> None:
        """Arrange for the job to run once, off the caller's thread, and return at once.

        Raise if the job cannot be queued (broker down, queue full): the core then removes the
        job's records and re-raises, so nothing is left half-submitted.
        """

    def queue_length(self) -> int | None:
        """How many jobs wait to start, or ``None`` if this backend cannot tell cheaply.

        Used to enforce ``LONGTASK_MAX_QUEUED``; a backend returning ``None`` is never refused.
        """
        return None

    def terminate(self, job_id: str, grace: float) -> None:
        """Stop a running job by force if it is still running ``grace`` seconds from now.

        Called after the core has set the job's cancel flag, and only for a job that a worker
        has already claimed. A backend that can stop work (processes, Celery) ends it and then
        calls :func:`flask_longtask.worker.mark_lost` so the job is recorded as cancelled. The
        default does nothing: cancellation is cooperative.
        """

    @classmethod
    def from_app(cls, app: Flask) -> Backend:
        """Make an instance configured from ``app.config`` (for ``LONGTASK_BACKEND``)."""
        return cls()

    def init_app(self, app: Flask) -> None:
        """Called once for each app the backend is registered on. Optional."""

    def close(self) -> None:
        """Release threads, processes and connections. Optional; idempotent."""


__all__ = ["MISSING", "Backend", "JobRequest", "Write"]
