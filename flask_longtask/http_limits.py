"""The HTTP API's limits: Server-Sent Events streams per process and per owner, the window in
which a job may be streamed, and the jobs one owner may have queued or running.

A stream holds a server thread (or, on a server that serves one request at a time per process,
such as gunicorn's sync workers, a whole process) for as long as it is open, so streams are
limited where they cost: in each process, by a counter in memory (``LONGTASK_SSE_MAX_STREAMS``),
and none at all on a server without threads. An owner's streams and active jobs are counted
across every process that shares the backend, with :class:`Slots`: numbered keys taken with the
backend's atomic :meth:`~flask_longtask.backends.Backend.add`, the one primitive every backend
has. A slot whose holder died goes away by itself: a stream's key expires soon after the stream
would have ended, and a job's is free once the job has ended.

Past a limit the API answers at once, ``429`` (this owner's limit) or ``503`` (the server's),
with ``Retry-After``; a client then polls ``GET {prefix}/jobs/<id>`` instead of streaming.
"""

from __future__ import annotations

import logging
import math
import re
import secrets
import threading
import time
import typing as t

from .backends.base import MISSING
from .config import DEFAULT_CONFIG
from .exceptions import JobNotFoundError
from .job import JobStatus
from .store import keys

if t.TYPE_CHECKING:  # pragma: no cover
    from .backends.base import Backend
    from .store import JobStore

_log = logging.getLogger(__name__)

#: Seconds in the ``Retry-After`` of an answer past a limit.
RETRY_AFTER: t.Final = 5

#: Seconds a stream's slot outlives the stream's own end: its key expires then, should the
#: process that held it die without releasing it.
_SLOT_MARGIN: t.Final = 10.0

#: Seconds a place for a job being submitted is held before the job's id replaces it.
_PENDING: t.Final = 30.0

_JOB_ID = re.compile(r"[0-9a-f]{32}")


class LimitReached(Exception):
    """A request past one of the limits: answered ``status`` with ``Retry-After``."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status, self.message = status, message


def _count(config: t.Mapping[str, t.Any], name: str, least: int) -> int | None:
    value = config.get(name, DEFAULT_CONFIG[name])
    if value is None or (isinstance(value, int) and not isinstance(value, bool) and value >= least):
        return value
    raise ValueError(f"{name} must be a whole number of {least} or more, or None for no limit, not {value!r}.")


def _window(config: t.Mapping[str, t.Any]) -> float:
    value = config.get("LONGTASK_SSE_WINDOW", DEFAULT_CONFIG["LONGTASK_SSE_WINDOW"])
    if isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0:
        return float(value)
    raise ValueError(f"LONGTASK_SSE_WINDOW must be a number of seconds above 0 (math.inf: no window), not {value!r}.")


def check_settings(config: t.Mapping[str, t.Any]) -> None:
    """Raise ``ValueError`` naming the first limit setting that is not valid."""
    _count(config, "LONGTASK_SSE_MAX_STREAMS", 0)
    _count(config, "LONGTASK_SSE_MAX_STREAMS_PER_OWNER", 0)
    _count(config, "LONGTASK_HTTP_MAX_ACTIVE", 1)
    _window(config)


class Slots:
    """At most ``size`` holders at once, across every process that shares ``backend``: holding
    slot ``n`` is holding the key ``name(n)``, taken with the atomic :meth:`Backend.add`."""

    def __init__(self, backend: Backend, name: t.Callable[[int], str], size: int) -> None:
        self.backend, self.name, self.size = backend, name, size

    def take(
        self, value: t.Any, expire: float | None, free: t.Callable[[t.Any], bool] = lambda held: False
    ) -> str | None:
        """A free slot's key, now holding ``value``; ``None`` if every slot is held.

        A held slot for which ``free(value)`` says its holder is done is released and taken.
        """
        names = [self.name(n) for n in range(self.size)]
        for key, held in zip(names, self.backend.get_many(names), strict=True):
            if held is not MISSING and free(held):
                self.backend.delete_if(key, held)
                held = MISSING
            if held is MISSING and self.backend.add(key, value, expire):
                return key
        return None

    def release(self, key: str, value: t.Any) -> None:
        """Give slot ``key`` back, if ``value`` still holds it."""
        try:
            self.backend.delete_if(key, value)
        except Exception:  # it expires by itself
            _log.exception("Could not release the HTTP API's slot %s.", key)


class Reservation:
    """A place for one more of an owner's active jobs, held while the job is submitted."""

    def __init__(self, slots: Slots | None, key: str | None, token: str) -> None:
        self.slots, self.key, self.token = slots, key, token

    def keep(self, job_id: str, expire: float) -> None:
        """The job is submitted and is this owner's: it holds the place until it ends."""
        if self.slots is not None and self.key is not None:
            self.slots.backend.set(self.key, job_id, expire)

    def cancel(self) -> None:
        """No new job of this owner's came of it (refused, or a job shared by another owner)."""
        if self.slots is not None and self.key is not None:
            self.slots.release(self.key, self.token)
            self.key = None


class Limits:
    """The limits of one HTTP API blueprint; it counts the streams open in this process."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.streams = 0

    def reserve_job(self, store: JobStore, owner: str, config: t.Mapping[str, t.Any]) -> Reservation:
        """Hold a place for one more queued or running job of ``owner`` (a digest).

        :raises LimitReached: ``429``: the owner has ``LONGTASK_HTTP_MAX_ACTIVE`` jobs queued or
            running already.
        """
        token = f"pending:{secrets.token_hex(8)}"
        limit = _count(config, "LONGTASK_HTTP_MAX_ACTIVE", 1)
        if limit is None:
            return Reservation(None, None, token)
        slots = Slots(store.backend, lambda n: keys.active_slot(owner, n), limit)

        def ended(held: t.Any) -> bool:
            if not (isinstance(held, str) and _JOB_ID.fullmatch(held)):
                return False  # a submit under way: its place expires by itself
            try:
                return JobStatus(store.read_record(held)["status"]).is_finished
            except JobNotFoundError:
                return True

        key = slots.take(token, _PENDING, ended)
        if key is None:
            raise LimitReached(
                429,
                f"You have {limit} jobs queued or running, as many as this server allows"
                " (LONGTASK_HTTP_MAX_ACTIVE): wait for one to end.",
            )
        return Reservation(slots, key, token)

    def admit_stream(
        self, store: JobStore, owner: str, record: dict[str, t.Any], config: t.Mapping[str, t.Any], threaded: bool
    ) -> tuple[float, t.Callable[[], None]]:
        """Let ``owner`` (a digest) stream the unfinished job ``record``: how many seconds the
        stream may last, and the function that ends its hold (call it once the stream closed).

        :raises LimitReached: ``503``: this process serves one request at a time, or holds
            ``LONGTASK_SSE_MAX_STREAMS`` streams; ``429``: the job is older than
            ``LONGTASK_SSE_WINDOW``, or its owner holds ``LONGTASK_SSE_MAX_STREAMS_PER_OWNER``.
        """
        window = _window(config)
        left = record["created"] + window - time.time()
        if left <= 0:
            raise LimitReached(
                429,
                f"This job was submitted more than {window:g} seconds ago (LONGTASK_SSE_WINDOW):"
                " it is no longer streamed; poll it instead.",
            )
        if not threaded:
            raise LimitReached(
                503,
                "This server answers one request at a time per process (gunicorn's sync workers,"
                " say): a stream would hold a whole process, so it streams nothing; poll the job"
                " instead, or serve with threads (gunicorn -k gthread --threads N).",
            )
        cap = _count(config, "LONGTASK_SSE_MAX_STREAMS", 0)
        with self._lock:
            if cap is not None and self.streams >= cap:
                raise LimitReached(
                    503,
                    f"This server streams to {cap} clients already (LONGTASK_SSE_MAX_STREAMS): poll the job instead.",
                )
            self.streams += 1
        lasts = min(float(config["LONGTASK_SSE_TIMEOUT"]), left)
        try:
            release_slot = self._owner_stream(store, owner, config, lasts)
        except BaseException:
            self._leave()
            raise
        done = threading.Event()

        def release() -> None:
            if not done.is_set():
                done.set()
                self._leave()
                release_slot()

        return lasts, release

    def _owner_stream(
        self, store: JobStore, owner: str, config: t.Mapping[str, t.Any], lasts: float
    ) -> t.Callable[[], None]:
        limit = _count(config, "LONGTASK_SSE_MAX_STREAMS_PER_OWNER", 0)
        if limit is None:
            return lambda: None
        slots = Slots(store.backend, lambda n: keys.stream_slot(owner, n), limit)
        token = secrets.token_hex(8)
        key = slots.take(token, lasts + _SLOT_MARGIN if math.isfinite(lasts) else None)
        if key is None:
            raise LimitReached(
                429,
                f"You have {limit} streams open, as many as this server allows"
                " (LONGTASK_SSE_MAX_STREAMS_PER_OWNER): poll the job instead, or close one.",
            )
        return lambda: slots.release(key, token)

    def _leave(self) -> None:
        with self._lock:
            self.streams -= 1
