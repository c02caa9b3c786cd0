"""CeleryBackend: jobs on Celery workers, state in Redis, for work that outgrows one host."""

from __future__ import annotations

import contextlib
import logging
import math
import os
import pickle
import threading
import time
import typing as t
import weakref

try:
    import redis
    from celery import Celery
    from celery import signals as celery_signals
    from kombu.exceptions import OperationalError as BrokerError
except ImportError as err:  # pragma: no cover
    raise ImportError('CeleryBackend needs Celery and redis: pip install "Flask-LongTask[celery]"') from err

from .. import coroutines
from ..config import DEFAULT_CONFIG
from ..ending import outcome_not_stored
from ..exceptions import LongTaskError, OutcomeNotStoredError, TamperedValueError
from ..worker import execute
from . import _celery_recovery as recovery
from . import _celery_scripts as scripts
from . import _celery_watchdog as watchdog
from . import _json
from ._celery_index import CeleryIndex
from ._signing import mac_key, sign, unsign
from .base import MISSING, Backend, JobEnd, JobQuery, JobRequest, NewJob, Tally, Write

if t.TYPE_CHECKING:  # pragma: no cover
    from flask import Flask

_log = logging.getLogger(__name__)

#: The one Celery task that runs every Flask-LongTask job; its only argument is the job id.
RUN_TASK = "flask_longtask.run"

# Which CeleryBackend serves a Celery app in this process (for the worker's signal handlers).
_by_celery: weakref.WeakKeyDictionary[Celery, CeleryBackend] = weakref.WeakKeyDictionary()


class CeleryBackend(Backend):
    """Run jobs on Celery workers; keep job state, progress, results and memos in Redis.

    Only the job id crosses the broker. Arguments, results and progress are stored in Redis as
    tagged JSON (:mod:`flask_longtask.backends._json`: tuples, bytes, sets, datetimes, NumPy
    arrays and Plotly figures round-trip; anything else fails at ``submit()``), so nothing is
    ever unpickled from Redis. Pass ``serializer="pickle"`` to carry any picklable value: each
    pickle is then signed (HMAC-SHA256, keyed by ``secret_key``, else ``LONGTASK_SECRET_KEY``, else
    the app's ``SECRET_KEY``) and checked before it is unpickled.

    Workers run the task ``flask_longtask.run`` that this backend registers on ``celery_app``:
    start them with ``celery -A yourapp:celery_app worker`` from a module that creates this
    backend, your Flask app and your tasks.

    :param celery_app: your Celery app (its broker carries job ids).
    :param redis_url: where job state lives; default: the Celery app's result backend if it is
        a Redis URL, else its broker.
    :param prefix: prefix of every Redis key this backend writes.
    :param serializer: ``"json"`` (default, tagged JSON) or ``"pickle"``.
    :param secret_key: what the pickles' signatures are keyed by (``serializer="pickle"``).
    """

    can_terminate = True
    #: Redis away (a restart, a failover) or the broker: a worker tries its job's end again.
    transient_errors = (redis.ConnectionError, redis.TimeoutError, BrokerError)

    def __init__(
        self,
        celery_app: Celery,
        *,
        redis_url: str | None = None,
        prefix: str = "longtask:",
        serializer: t.Literal["json", "pickle"] = "json",
        secret_key: str | bytes | None = None,
    ) -> None:
        self.celery = celery_app
        url = redis_url or _redis_url(celery_app)
        self.redis: redis.Redis = redis.Redis.from_url(url)
        self.prefix = prefix
        if serializer not in ("json", "pickle"):
            raise ValueError(f"serializer must be 'json' or 'pickle', not {serializer!r}.")
        self.serializer = serializer
        #: The key of the pickles' signatures (``serializer="pickle"``): see init_app.
        self._mac: bytes | None = None if secret_key is None else mac_key(secret_key)
        self._local = threading.local()
        self._delete_if = self.redis.register_script(scripts.DELETE_IF)
        self._add_then_write = self.redis.register_script(scripts.ADD_THEN_WRITE)
        self._index = CeleryIndex(self)  # the listing index (see _celery_index)
        self._blocking_wait = True
        #: Seconds a job may wait queued, unclaimed, before a worker's watchdog publishes it again
        #: (``LONGTASK_CELERY_REQUEUE_AFTER``: see init_app; ``None``: never).
        self.requeue_after: float | None = DEFAULT_CONFIG["LONGTASK_CELERY_REQUEUE_AFTER"]
        self._requeue_set = False
        #: The watchdog of forced stops and lost messages, in the main process of a Celery worker
        #: (see _on_worker_ready).
        self._watchdog: watchdog.Watchdog | None = None
        self._watchdog_lock = threading.Lock()
        _register(celery_app, self)

    def __repr__(self) -> str:
        return f"<CeleryBackend {self.celery.main!r} prefix={self.prefix!r}>"

    @classmethod
    def from_app(cls, app: Flask) -> CeleryBackend:
        broker = app.config.get("LONGTASK_CELERY_BROKER_URL")
        result = app.config.get("LONGTASK_CELERY_RESULT_BACKEND") or broker
        if not broker:
            raise RuntimeError(
                "LONGTASK_BACKEND = 'celery' needs LONGTASK_CELERY_BROKER_URL (e.g. 'redis://localhost:6379/0'),"
                " or pass LongTask(app, backend=CeleryBackend(celery_app))."
            )
        celery_app = Celery(app.import_name, broker=broker, backend=result)
        return cls(celery_app, redis_url=result)

    def init_app(self, app: Flask) -> None:
        """Take ``LONGTASK_CELERY_REQUEUE_AFTER`` from ``app``'s config (the smallest, when the
        backend serves several apps; ``None`` in all of them turns republishing off).

        :raises ValueError: the setting is neither ``None`` nor a positive finite number.
        """
        secret = app.config.get("LONGTASK_SECRET_KEY") or app.config.get("SECRET_KEY")
        if self._mac is None and secret:
            self._mac = mac_key(secret)
        after = app.config.get("LONGTASK_CELERY_REQUEUE_AFTER")
        if after is not None and (
            isinstance(after, bool) or not isinstance(after, (int, float)) or not 0 < after < math.inf
        ):
            raise ValueError(
                f"LONGTASK_CELERY_REQUEUE_AFTER must be a positive number of seconds or None, not {after!r}."
            )
        if not self._requeue_set or self.requeue_after is None:
            self.requeue_after = None if after is None else float(after)
        elif after is not None:
            self.requeue_after = min(self.requeue_after, float(after))
        self._requeue_set = True

    # -- serialisation --------------------------------------------------------------------------

    def dumps(self, value: t.Any) -> bytes:
        return _json.dumps(value) if self.serializer == "json" else sign(self._pickle_key(), super().dumps(value))

    def loads(self, data: bytes) -> t.Any:
        if self.serializer == "json":
            return _json.loads(data)
        body = unsign(self._pickle_key(), data)
        if body is None:  # never unpickled: whoever wrote it to Redis did not have the key
            raise TamperedValueError(
                f"Refused to unpickle a value from Redis (prefix {self.prefix!r}) whose signature does not match:"
                " it was written with another LONGTASK_SECRET_KEY / SECRET_KEY, or by someone without it."
            )
        return pickle.loads(body)

    def _pickle_key(self) -> bytes:
        if self._mac is None:
            raise LongTaskError(
                "CeleryBackend(serializer='pickle') signs the pickles it keeps in Redis: set LONGTASK_SECRET_KEY"
                " (or SECRET_KEY), the same on web processes and workers, or pass secret_key=."
            )
        return self._mac

    # -- storage: plain data as tagged JSON under prefixed keys ---------------------------------

    @contextlib.contextmanager
    def batch(self) -> t.Iterator[None]:
        # Writes inside a batch are buffered in a pipeline and sent in one round trip; a read or
        # an add() sends what is buffered first, so every call still sees the writes before it.
        local = self._local
        outer = getattr(local, "pipe", None) is not None
        if not outer:
            local.pipe = self.redis.pipeline(transaction=False)
        try:
            yield
        finally:
            if not outer:
                pipe, local.pipe = local.pipe, None
                pipe.execute()

    def _writer(self) -> t.Any:
        return getattr(self._local, "pipe", None) or self.redis

    def _flush(self) -> None:
        pipe = getattr(self._local, "pipe", None)
        if pipe is not None and len(pipe):
            pipe.execute()

    def get(self, key: str) -> t.Any:
        self._flush()
        data = self.redis.get(self.prefix + key)
        return MISSING if data is None else _json.loads(t.cast(bytes, data))

    def get_many(self, keys: t.Sequence[str]) -> list[t.Any]:
        self._flush()
        values = self.redis.mget([self.prefix + key for key in keys])
        return [MISSING if data is None else _json.loads(t.cast(bytes, data)) for data in values]

    def set(self, key: str, value: t.Any, expire: float | None = None) -> None:
        if expire is not None and expire <= 0:
            self._writer().delete(self.prefix + key)
            return
        self._writer().set(self.prefix + key, _json.dumps(value), px=_px(expire))

    def add(self, key: str, value: t.Any, expire: float | None = None) -> bool:
        self._flush()
        return bool(self.redis.set(self.prefix + key, _json.dumps(value), px=_px(expire), nx=True))

    def delete(self, key: str) -> None:
        self._writer().delete(self.prefix + key)

    def delete_if(self, key: str, value: t.Any) -> bool:
        self._flush()
        return bool(self._delete_if(keys=[self.prefix + key], args=[_json.dumps(value)]))

    def claim_and_get(
        self, key: str, value: t.Any, expire: float | None, keys: t.Sequence[str]
    ) -> tuple[bool, list[t.Any]]:
        self._flush()
        names = [self.prefix + k for k in keys]
        pipe = self.redis.pipeline(transaction=False)
        pipe.set(self.prefix + key, _json.dumps(value), px=_px(expire), nx=True)
        pipe.mget(names)
        added, values = pipe.execute()
        if added and keys and values[0] is None:
            # The worker reads the job's record first. store_and_enqueue() sends the record and
            # the task message at once, over two connections, and its caller returns only once
            # both are stored: a worker that got here first waits for the record. None after
            # _RECORD_WAIT seconds: the submit failed (it then deletes what it wrote), or the
            # job was purged while its message was queued.
            deadline, pause = time.monotonic() + _RECORD_WAIT, 0.0005
            while values[0] is None and time.monotonic() < deadline:
                time.sleep(pause)
                pause = min(pause * 2, 0.05)
                values = self.redis.mget(names)
        found = [MISSING if data is None else _json.loads(t.cast(bytes, data)) for data in values]
        if added and keys and recovery.too_early(self, key, value, found[0]):
            return False, found  # a copy of a retry's message, ahead of its countdown
        return bool(added), found

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
        return self._add_then_write_script(key, value, expire, writes, unless, otherwise, None)

    def end_job(self, end: JobEnd) -> bool | None:
        # The end also pushes to the job's done list, which wakes its waiters (see wait()), takes
        # the job out of the index of queued jobs, and updates its listing entry.
        return self._add_then_write_script(
            end.key, end.at, end.expire, end.writes, end.unless, end.otherwise, end.job_id, self._index.on_end(end)
        )

    def _add_then_write_script(
        self,
        key: str,
        value: t.Any,
        expire: float | None,
        writes: t.Sequence[Write],
        unless: str | None,
        otherwise: t.Sequence[Write],
        ended: str | None,
        entry: str | None = None,
    ) -> bool | None:
        # One script, so one round trip, and atomic: Redis runs a script alone.
        self._flush()
        push = self._done_key(ended) if ended else self.prefix + key
        names = [self.prefix + key, self.prefix + (unless or key), push, recovery.queued_key(self.prefix)]
        args: list[t.Any] = [_json.dumps(value), _px(expire) or 0, 1 if unless else 0, len(writes), ended or ""]
        for op, k, v, exp in (*writes, *otherwise):
            if op == "set" and exp is not None and exp <= 0:
                op, v = "delete", None
            names.append(self.prefix + k)
            args += (op, "" if op == "delete" else _json.dumps(v), (_px(exp) or 0) if op == "set" else 0)
        if entry is not None:  # (last: see _celery_index.ON_END)
            args.append(entry)
        done = int(self._add_then_write(keys=names, args=args))
        return None if done < 0 else bool(done)

    def _done_key(self, job_id: str) -> str:
        """The Redis list a job's end pushes to, which its waiters block on."""
        return f"{self.prefix}done:{job_id}"

    def wait(self, job_id: str, keys: t.Sequence[str], *, timeout: float, elapsed: float) -> list[t.Any]:
        # The first look is a plain read. Later ones block in BLMOVE, from the job's done list to
        # itself: it returns at once if the job's end has pushed to it, else when it does (for
        # every waiter: the element stays) or at the timeout. The read is pipelined behind it:
        # Redis runs it as soon as the wait is over.
        if elapsed == 0.0:
            return self.get_many(keys)
        if not self._blocking_wait:
            return super().wait(job_id, keys, timeout=timeout, elapsed=elapsed)
        timeout = min(timeout, _RECHECK)
        self._flush()
        done = self._done_key(job_id)
        pipe = self.redis.pipeline(transaction=False)  # not MULTI: a blocking command would not block
        limit = self.redis.connection_pool.connection_kwargs.get("socket_timeout")
        if limit:  # block for less than the client waits for a reply
            timeout = min(timeout, limit * 0.8)
        pipe.blmove(done, done, t.cast(int, max(timeout, 0.001)), "LEFT", "LEFT")  # Redis takes seconds as a float
        pipe.mget([self.prefix + k for k in keys])
        try:
            replies = pipe.execute(raise_on_error=False)
        except redis.TimeoutError:  # a client socket_timeout shorter than the wait
            return self.get_many(keys)
        if isinstance(replies[0], redis.ResponseError) and "unknown command" in str(replies[0]).lower():
            # Redis < 6.2 has no BLMOVE: poll from now on (other errors, such as a replica's
            # READONLY during a failover, only cost this one wait)
            self._blocking_wait = False
        if isinstance(replies[1], Exception):
            raise replies[1]
        return [MISSING if data is None else _json.loads(t.cast(bytes, data)) for data in replies[1]]

    def forget(self, job_id: str) -> None:
        self.redis.delete(self._done_key(job_id))
        self._index.forget(job_id)

    def list_jobs(self, query: JobQuery) -> list[str]:
        self._flush()
        return self._index.query(query)

    def count_jobs(self) -> dict[str, int]:
        self._flush()
        return self._index.counts()

    def job_tallies(self) -> list[Tally]:
        self._flush()
        return self._index.tallies()

    def scan(self, prefix: str) -> t.Iterator[str]:
        self._flush()
        pattern = _glob_escape(self.prefix + prefix) + "*"
        cut = len(self.prefix)
        for raw in self.redis.scan_iter(match=pattern, count=1000):
            yield raw.decode()[cut:]

    # -- execution ------------------------------------------------------------------------------

    def store_and_enqueue(self, job: NewJob) -> None:
        # Send the writes, send the task message while Redis handles them, then read their
        # replies: a submit costs one round trip less. A worker that gets the message before
        # Redis has stored the record waits for it (claim_and_get).
        commands = self._index.on_create(job.entry)  # (first: a worker that finds the record finds it)
        for op, key, value, expire in job.writes:
            if op != "set":  # pragma: no cover - the core writes a new job with "set" only
                return super().store_and_enqueue(job)
            px = _px(expire)
            command: tuple[t.Any, ...] = ("SET", self.prefix + key, _json.dumps(value))
            commands.append(command if px is None else (*command, "PX", px))
        # It waits for a worker from now: in the index of queued jobs (see _celery_recovery).
        commands.append(("ZADD", recovery.queued_key(self.prefix), job.record["created"], job.id))
        self._flush()
        pool = self.redis.connection_pool
        conn: t.Any = pool.get_connection()  # redis-py's Connection is untyped
        try:
            conn.send_packed_command(conn.pack_commands(commands))
            try:
                self.publish(job.id)
            finally:
                for _ in commands:
                    conn.read_response()  # raises the command's error, if any
        except BaseException:
            conn.disconnect()  # replies may be left unread: never reuse this connection
            raise
        finally:
            pool.release(conn)
        job.announce()

    def enqueue(self, request: JobRequest) -> None:
        recovery.index(self, request.job_id, time.time())
        self.publish(request.job_id)

    def enqueue_after(self, request: JobRequest, delay: float) -> None:
        # Celery's own countdown: the broker holds the retry, whoever sent it may exit. Indexed
        # from the end of the countdown: a lost message is published again from then on.
        recovery.index(self, request.job_id, time.time() + delay)
        self.publish(request.job_id, countdown=delay)

    def publish(self, job_id: str, countdown: float | None = None) -> None:
        """Send job ``job_id``'s task message (again: a watchdog's republish, see
        :mod:`~flask_longtask.backends._celery_recovery`)."""
        # The Celery task id is the job id, so a revoke can name the job. No Celery result: the
        # job's outcome is in our records (and not asking for one saves a SUBSCRIBE per submit).
        self.celery.send_task(RUN_TASK, args=[job_id], task_id=job_id, ignore_result=True, countdown=countdown)

    def terminate(self, job_id: str, grace: float) -> None:
        """Have job ``job_id`` stopped by force if it still runs ``grace`` seconds from now.

        The deadline is written to Redis and this returns: the worker running the job enforces
        it (its watchdog: see :mod:`~flask_longtask.backends._celery_watchdog`), so the caller
        may exit at once, and may be the job's own pool process (its time limit). Pools that
        cannot terminate a task (solo, threads, gevent, eventlet) run no watchdog: there the
        cancel stays cooperative.

        :raises ValueError: ``job_id`` is not a job id, or ``grace`` not a finite number >= 0.
        """
        if watchdog.job_id_of(job_id) is None:
            raise ValueError(f"Not a job id (32 lowercase hex digits): {job_id!r}.")
        if isinstance(grace, bool) or not isinstance(grace, (int, float)) or not 0 <= grace < math.inf:
            raise ValueError(f"The grace of a forced stop must be a finite number of seconds >= 0, not {grace!r}.")
        self._flush()
        watchdog.schedule(self, job_id, time.time() + grace)

    def start_watchdog(self, hostname: str, *, stops: bool = True) -> None:
        """Start this Celery worker's watchdog, once (the worker's ``worker_ready`` signal calls
        this, in its main process; again after a reconnection, which starts nothing new): it
        publishes again the jobs whose message was lost (see :attr:`requeue_after`) and, with
        ``stops`` (the prefork pool), enforces the forced stops of the jobs this worker runs."""
        with self._watchdog_lock:
            if self._watchdog is None or not self._watchdog.running:
                self._watchdog = watchdog.Watchdog(self, hostname, RUN_TASK, stops=stops)
                self._watchdog.start()
                if stops:
                    _log.info("Flask-LongTask: %s stops cancelled jobs by force past their grace.", hostname)
                if self.requeue_after is not None:
                    _log.info(
                        "Flask-LongTask: %s publishes again the jobs left queued with no worker for %g s.",
                        hostname,
                        self.requeue_after,
                    )

    def stop_watchdog(self) -> None:
        with self._watchdog_lock:
            dog, self._watchdog = self._watchdog, None
        if dog is not None:
            dog.stop()

    def run_worker(self, workers: int | None = None) -> None:
        """Run a Celery worker for this backend's Celery app in this process (``flask longtask
        worker``): the prefork pool, so that cancellation can stop a running job by force."""
        argv = ["worker", "--pool=prefork", "--loglevel=INFO", "--without-gossip", "--without-mingle"]
        if workers:
            argv.append(f"--concurrency={workers}")
        self.celery.worker_main(argv)

    def close(self) -> None:
        self.stop_watchdog()
        self.redis.close()


#: Seconds a Celery worker waits for the record of a job whose message came first.
_RECORD_WAIT = 5.0
#: The longest a waiter blocks in Redis before it reads the job again (for an end that pushed
#: nothing to its done list: a worker found lost by a reader, a record that expired).
_RECHECK = 1.0


def _px(expire: float | None) -> int | None:
    return None if expire is None else max(1, int(expire * 1000))


def _redis_url(celery_app: Celery) -> str:
    for url in (celery_app.conf.result_backend, celery_app.conf.broker_url):
        if isinstance(url, str) and url.startswith(("redis://", "rediss://", "unix://")):
            return url
    raise ValueError("CeleryBackend needs a Redis URL: pass redis_url=..., or use Redis as Celery's result backend.")


def _glob_escape(text: str) -> str:
    return "".join("\\" + c if c in "*?[]\\" else c for c in text)


def _register(celery_app: Celery, backend: CeleryBackend) -> None:
    """Register the run task on ``celery_app`` (once) and make ``backend`` the one it uses."""
    _by_celery[celery_app] = backend
    if RUN_TASK in celery_app.tasks:
        return

    @celery_app.task(name=RUN_TASK, ignore_result=True, acks_late=False)  # type: ignore[untyped-decorator]
    def run(job_id: str) -> None:
        execute(_by_celery[celery_app], job_id)


def _backend_for(sender: t.Any) -> CeleryBackend | None:
    if getattr(sender, "name", None) != RUN_TASK:
        return None
    return _by_celery.get(sender.app)


def _on_revoked(
    sender: t.Any = None, request: t.Any = None, terminated: bool = False, signum: t.Any = None, **kw: t.Any
) -> None:
    backend = _backend_for(sender)
    if backend is not None and request is not None and terminated:
        # This worker remembers the id as revoked and would drop its next message: a retry after
        # the job's time limit is sent under the same id (our records, not Celery's memory, say
        # whether a job may run).
        from celery.worker import state

        state.revoked.discard(request.id)
        recovery.record_end(backend, request.id, f"its Celery task was terminated (signal {signum})")


def _on_failure(
    sender: t.Any = None, task_id: str | None = None, exception: BaseException | None = None, **kw: t.Any
) -> None:
    # execute() records every exception of a job itself; a failure that reaches Celery means the
    # process running the job died (WorkerLostError), or execute() itself could not run, or the
    # job's end could not be stored (Redis away for longer than the worker's patience).
    backend = _backend_for(sender)
    if backend is None or task_id is None:
        return
    if isinstance(exception, OutcomeNotStoredError):
        how = "its outcome could not be stored"
        recovery.record_end(backend, task_id, how, attempt=exception.attempt, error=outcome_not_stored(exception))
    elif isinstance(exception, backend.transient_errors):
        # Redis was away before the job ran: unclaimed, it is published again (see
        # _celery_recovery); claimed, its missing heartbeat ends it.
        _log.warning("Job %s could not be started: %s: %s", task_id, type(exception).__name__, exception)
    else:
        recovery.record_end(backend, task_id, f"{type(exception).__name__}: {exception}")


def _backend_of(sender: t.Any) -> CeleryBackend | None:
    """The backend serving the Celery app of a worker's signal (its consumer, or the worker)."""
    app = getattr(sender, "app", None)
    return _by_celery.get(app) if isinstance(app, Celery) else None


def _on_worker_ready(sender: t.Any = None, **kw: t.Any) -> None:
    # In the worker's main process, once its pool runs (its pool processes were forked before:
    # they have no watchdog thread). To stop a running task, the pool must be able to: prefork.
    backend = _backend_of(sender)
    if backend is None:
        return
    from celery.concurrency.prefork import TaskPool as Prefork

    hostname = getattr(sender, "hostname", None)
    stops = isinstance(getattr(sender, "pool", None), Prefork) and isinstance(hostname, str)
    if not stops:
        _log.info(
            "Flask-LongTask: this Celery worker's pool cannot stop a running task; cancelling a"
            " job that ignores its flag waits for it to return (use --pool=prefork to stop it)."
        )
    elif not backend.celery.conf.worker_enable_remote_control:
        stops = False
        _log.warning(
            "Flask-LongTask: this Celery worker runs without remote control, so it cannot be told to"
            " stop a task: cancelling a job that ignores its flag waits for it to return."
        )
    backend.start_watchdog(hostname if isinstance(hostname, str) else "celery", stops=stops)


def _on_process_init(**kw: t.Any) -> None:
    # In each prefork pool process (the only pool that sends this): a coroutine job that has not
    # ended by its grace's end ends its process, as a sync job's forced stop does (one job per
    # process: no neighbour dies); the main process records the job's end (see .coroutines).
    coroutines.on_stuck = _exit_stuck


def _exit_stuck(reason: str, blocked: bool) -> None:
    _log.error("Flask-LongTask: %s; this pool process exits.", reason)
    os._exit(1)


def _on_worker_shutdown(sender: t.Any = None, **kw: t.Any) -> None:
    backend = _backend_of(sender)
    if backend is not None:
        backend.stop_watchdog()


# All run in the Celery worker's main process, which sees its pool processes die or be killed.
celery_signals.task_revoked.connect(_on_revoked, weak=False)
celery_signals.task_failure.connect(_on_failure, weak=False)
celery_signals.worker_ready.connect(_on_worker_ready, weak=False)
celery_signals.worker_process_init.connect(_on_process_init, weak=False)
celery_signals.worker_shutdown.connect(_on_worker_shutdown, weak=False)

__all__ = ["RUN_TASK", "CeleryBackend"]
