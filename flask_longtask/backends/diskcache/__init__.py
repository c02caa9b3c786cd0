"""DiskcacheBackend: state in a diskcache directory, jobs in a persistent pool of processes."""

from __future__ import annotations

import atexit
import logging
import os
import shutil
import tempfile
import threading
import time
import typing as t
import weakref

try:
    import dill  # noqa: F401 - used by .scripts; checked here, once
    import diskcache  # noqa: F401 - used by .connections and .private; checked here, once
    import multiprocess  # noqa: F401 - used by .host; checked here, once
except ImportError as err:  # pragma: no cover - depends on the environment
    raise ImportError(
        'DiskcacheBackend needs "diskcache" and "multiprocess" (dependencies of Flask-LongTask):'
        ' pip install "diskcache>=5.6" "multiprocess>=0.70.15"'
    ) from err

from ...config import DEFAULT_CONFIG
from ...coroutines import concurrency_value
from ...exceptions import LongTaskError
from ...store import keys as _keys
from ...worker import mark_lost
from .._signing import mac_key
from ..base import MISSING, Backend, JobEnd, JobQuery, JobRequest, NewJob, Tally, Write
from . import child, elastic, fifo, host, index, loops, private, scripts, signed, starting, submits, waiting, wire
from .connections import Cache, ErrorLog
from .connections import storage_call as _storage
from .host import LOCK_NAME, TICK, PoolHost
from .table import Table, open_storage
from .workers import WorkerView

if t.TYPE_CHECKING:  # pragma: no cover
    from flask import Flask

_log = logging.getLogger(__name__)

#: Every live backend that may host a pool: closed at exit, reset in a forked child.
_instances: weakref.WeakSet[DiskcacheBackend] = weakref.WeakSet()
#: How often a wait in the host's process looks at storage while it waits for a job's end: a
#: worker sends its "done" after the job's end signals and app-context teardown (user code,
#: which may be slow), and an end may come by another way (a lost worker) that wakes nobody.
RECHECK = 0.05


def _setting(app: Flask, name: str) -> t.Any:
    """``app.config[name]``, or its default when ``LongTask.init_app`` has not set it yet."""
    return app.config.get(name, DEFAULT_CONFIG[name])


class DiskcacheBackend(Backend):
    """Keep job state in a diskcache directory and run jobs in a persistent pool of processes.

    The default backend. Every process that opens the same directory on the same host -- the
    workers of gunicorn, the Flask reloader, ``flask longtask`` commands -- shares the same
    jobs, progress, results and memo cache. Exactly one of them hosts the pool of worker
    processes: the first to use the backend wins an ``flock`` on the directory, and when it dies
    another takes over, fails the jobs that were running there ("worker lost") and runs the jobs
    still queued. Worker processes are started from a clean server process (no lock of a threaded
    server is ever inherited) and reused; ``workers`` are kept warm. While every one is busy with a
    job that waits (sleeps, I/O) and more are queued, the pool grows, up to ``max_workers``, never
    past the CPUs with jobs that burn CPU; the extra workers exit after ``worker_idle`` seconds
    without a job (see :mod:`.elastic`). Jobs no worker runs wait in FIFO order. A job that
    ignores cancellation is ended by stopping its process after ``LONGTASK_CANCEL_GRACE``
    seconds; a worker that dies fails its job, saying how, and is replaced. POSIX only.

    >>> import tempfile
    >>> backend = DiskcacheBackend(tempfile.mkdtemp(), workers=2)
    >>> backend.set("greeting", "hello")
    >>> backend.get("greeting")
    'hello'
    >>> backend.close()

    :param directory: the diskcache directory; created if missing. ``from_app`` uses
        ``LONGTASK_DISKCACHE_DIR``, by default ``<instance folder>/longtask``.
    :param workers: the workers kept warm when this process hosts the pool (default: the CPU count).
    :param max_workers: the ceiling of the pool (default: four per CPU, and never below ``workers``).
    :param worker_idle: seconds after which a worker above ``workers`` exits without a job.
    :param embedded: whether this process may host the pool. ``False`` for web processes when
        ``flask longtask worker`` runs the pool (``LONGTASK_EMBEDDED_WORKER = False``).
    :param cleanup_interval: seconds between sweeps of expired records by the pool host.
    :param async_concurrency: coroutine jobs one worker of them runs at once (default 100).
    :param start_method: how worker processes start: ``"forkserver"`` (default: forked from a
        clean single-threaded server process, fast) or ``"spawn"`` (a new interpreter each).
        Never ``"fork"``: a fork of a threaded web process can inherit a held lock.
    """

    can_terminate = True
    stores_batches = True  # (one transaction: see .submits)

    def __init__(
        self,
        directory: str | os.PathLike[str] | None = None,
        workers: int | None = None,
        *,
        max_workers: int | None = None,
        worker_idle: float = 60.0,
        embedded: bool = True,
        cleanup_interval: float = 60.0,
        start_method: str = "forkserver",
        secret_key: str | bytes | None = None,
        async_concurrency: int | None = None,
    ) -> None:
        if start_method not in ("forkserver", "spawn"):
            raise ValueError(f"start_method must be 'forkserver' or 'spawn', not {start_method!r}.")
        self.workers, self.max_workers, self.worker_idle = elastic.settings(workers, max_workers, worker_idle)
        #: Coroutine jobs one worker of coroutine jobs runs at once (see .loops).
        self.async_concurrency = concurrency_value(async_concurrency)
        #: The process that made a private temporary directory for want of one (it removes it).
        self._made_by = os.getpid() if directory is None else None
        if directory is None:
            directory = tempfile.mkdtemp(prefix="flask-longtask-")
        self.directory = os.path.abspath(os.fspath(directory))
        starting.watch(self.directory)  # (a worker importing the script: see .starting)
        self.embedded = embedded
        self.cleanup_interval = cleanup_interval
        self.start_method = start_method
        #: What the storage's MAC key is derived from (see :mod:`.signed`); ``None`` until an app
        #: says (``LONGTASK_SECRET_KEY``, ``SECRET_KEY``) or the storage opens (the key file).
        self.secret_key = secret_key
        self._cache: Cache | None = None
        self._table: Table | None = None
        self._lock = threading.RLock()
        self._elected = False  # whether this process has joined the election for the pool
        self._closed = threading.Event()
        self._host: PoolHost | None = None
        self._fifo: fifo.FifoClient | None = None
        self._apps: weakref.WeakSet[Flask] = weakref.WeakSet()
        self._warned_no_host = False
        self._report = ErrorLog(_log, host.LOG_EVERY)  # (storage failures: many a second, at worst)
        self._driving = False  # whether run_pool() hosts the pool in this process
        self._lock_failing = False  # pool.lock could not be opened (logged once: _try_to_host)
        _instances.add(self)

    def __repr__(self) -> str:
        return f"<DiskcacheBackend {self.directory!r}: {self.pool_size()}>"

    def pool_size(self) -> str:
        """The pool's size in words: the workers kept warm, and its ceiling if it may grow."""
        top = elastic.ceiling(self.workers, self.max_workers)
        return f"{self.workers} workers" + (f", up to {top} while jobs wait" if top > self.workers else "")

    @classmethod
    def from_app(cls, app: Flask) -> DiskcacheBackend:
        directory = _setting(app, "LONGTASK_DISKCACHE_DIR") or os.path.join(app.instance_path, "longtask")
        names = ("LONGTASK_WORKERS", "LONGTASK_MAX_WORKERS", "LONGTASK_WORKER_IDLE")  # (checked, named so)
        workers, most, idle = (_setting(app, name) for name in names)
        workers, most, idle = elastic.settings(workers, most, idle, names=names)
        embedded = bool(_setting(app, "LONGTASK_EMBEDDED_WORKER"))
        aio = concurrency_value(_setting(app, "LONGTASK_ASYNC_CONCURRENCY"))
        return cls(directory, workers, max_workers=most, worker_idle=idle, embedded=embedded, async_concurrency=aio)

    def init_app(self, app: Flask) -> None:
        self._apps.add(app)
        starting.guard_run(app)  # (app.run() in a worker importing the script raises)
        if self.secret_key is None:  # (the first app's, if it has one: every process must agree)
            self.secret_key = _setting(app, "LONGTASK_SECRET_KEY") or app.config.get("SECRET_KEY")
        if not _setting(app, "LONGTASK_EMBEDDED_WORKER"):
            self.embedded = False  # even for a backend passed in: the app's config says no pool here

    # -- serialisation --------------------------------------------------------------------------

    def dumps(self, value: t.Any) -> bytes:
        """Pickle ``value`` (else dill: lambdas, closures); ``TypeError`` for an unusable function of ``__main__``."""
        return scripts.dumps(value, self, in_worker=child.current() is not None)

    # -- storage --------------------------------------------------------------------------------

    @property
    def cache(self) -> Cache:
        """The :class:`diskcache.Cache` of the directory; opening it joins the pool election.

        Job keys are not in it but in a lean table of the same database (see
        :mod:`~flask_longtask.backends.diskcache.table`); it holds the pool's mailbox.
        """
        cache = self._cache
        if cache is None:
            cache = self._open()[0]
        if not self._elected:
            self._join_election()
        return cache

    @property
    def table(self) -> Table:
        table = self._table
        if table is None:
            table = self._open()[1]
        if not self._elected:
            self._join_election()
        return table

    def _open(self) -> tuple[Cache, Table]:
        with self._lock:
            if self._cache is None or self._table is None:
                try:
                    private.prepare(self.directory)
                    disk = signed.disk_with(mac_key(self.storage_secret()))
                    self._cache, self._table = open_storage(self.directory, disk)
                    pool = self._host
                    if pool is not None and pool.replaced():
                        # Opened anew (see connections.unreadable) where the directory was removed: the
                        # pool hosted here serves the old one, and takes no job from now on.
                        pool.step_down()
                except LongTaskError:
                    raise
                except Exception as exc:
                    raise self._report(
                        f"DiskcacheBackend cannot open its directory {self.directory!r}: {exc}."
                        " Check that it exists, is writable and holds a diskcache (delete a corrupted"
                        " one), or set LONGTASK_DISKCACHE_DIR to another directory."
                    ) from exc
            return self._cache, self._table

    def storage_secret(self) -> str | bytes:
        """The secret the storage's MAC key is derived from (the key file's if none was given)."""
        if self.secret_key is None:
            self.secret_key = signed.key_file_secret(self.directory)
        return self.secret_key

    @_storage
    def get(self, key: str) -> t.Any:
        return self.table.get(key)

    @_storage
    def get_many(self, keys: t.Sequence[str]) -> list[t.Any]:
        return self.table.get_many(keys)

    @_storage
    def set(self, key: str, value: t.Any, expire: float | None = None) -> None:
        self.table.set(key, value, expire)

    @_storage
    def add(self, key: str, value: t.Any, expire: float | None = None) -> bool:
        return self.table.add(key, value, expire)

    @_storage
    def delete(self, key: str) -> None:
        self.table.delete(key)

    @_storage
    def delete_if(self, key: str, value: t.Any) -> bool:
        return self.table.delete_if(key, value)

    @_storage
    def claim_and_get(
        self, key: str, value: t.Any, expire: float | None, keys: t.Sequence[str]
    ) -> tuple[bool, list[t.Any]]:
        return self.table.claim_and_get(key, value, expire, keys)

    @_storage
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
        return self.table.add_then_write(key, value, expire, writes, unless=unless, otherwise=otherwise)

    @_storage
    def end_job(self, end: JobEnd) -> bool | None:
        """Write a job's end. A pool worker writes its own, and claims the job sent ahead to it in
        the same transaction (:meth:`.child.Child.end_job`); a worker of coroutine jobs, those
        that end together in one (.loops). Elsewhere (a lost job...), the host's waiters are told."""
        me = loops.together if loops.together and end.job_id in loops.together.running else child.current()
        if me is not None and (me is loops.together or end.job_id == t.cast(child.Child, me).running):
            return me.end_job(self, end)
        chosen = self.table.add_then_write(
            end.key, end.at, end.expire, end.writes, unless=end.unless, otherwise=end.otherwise, ended=end.ended
        )
        if chosen is not None:
            self._announce_end(end.job_id)
        return chosen

    def _announce_end(self, job_id: str) -> None:
        pool = self._host
        if pool is not None:
            pool.announce_end(job_id)
        elif not self._closed.is_set():  # (not a loop worker's own jobs: their Done says it)
            try:
                self._send(wire.Ended(job_id), warn=False)
            except Exception:  # only a wake-up: waiters look at storage again soon anyway
                _log.debug("Could not tell the pool host that job %s ended.", job_id, exc_info=True)

    def wait(self, job_id: str, keys: t.Sequence[str], *, timeout: float, elapsed: float) -> list[t.Any]:
        """In the process hosting the pool, a wait is woken the moment a worker reports the job
        done (or lost), with what the job's end wrote when the worker sent it, and needs no
        first read for a job the pool follows (:meth:`.host.PoolHost.tracks`). Elsewhere it
        polls, as :meth:`Backend.wait` does."""
        pool = self._host
        if pool is None or (elapsed == 0.0 and not pool.tracks(job_id)):
            return super().wait(job_id, keys, timeout=timeout, elapsed=elapsed)
        ended = waiting.wait_done(pool, job_id, min(timeout, RECHECK))
        if ended is not None and keys and keys[0] in ended:
            return [ended.get(key, MISSING) for key in keys]
        return self.get_many(keys)

    def pool_workers(self) -> list[WorkerView] | None:
        """What each worker process of the pool does (workers of coroutine jobs too), if this
        process hosts the pool (else ``None``): for an operator's view, and for tests."""
        if (pool := self._host) is None:
            return None
        with pool.mutex:
            return [worker.view() for worker in pool.workers + pool.loops.workers]

    def worker_count(self) -> int | None:  # (known in the process hosting the pool)
        workers = self.pool_workers()
        return None if workers is None else len(workers)

    @_storage
    def write_all(self, writes: t.Sequence[Write]) -> None:
        self.table.write_all(writes)

    def batch(self) -> t.ContextManager[None]:
        # One SQLite transaction for a job step: a write costs its commit, not its row.
        return self.table.batch()

    @_storage
    def scan(self, prefix: str) -> t.Iterator[str]:
        return iter(self.table.scan(prefix))

    @_storage
    def list_jobs(self, query: JobQuery) -> list[str]:
        return index.query(self.table, query)

    @_storage
    def count_jobs(self) -> dict[str, int]:
        return index.counts(self.table)

    @_storage
    def forget(self, job_id: str) -> None:
        index.forget(self.table, job_id)

    @_storage
    def job_tallies(self) -> list[Tally]:
        return index.tallies(self.table)

    @_storage
    def cleanup(self) -> int:
        """Remove every expired record, result and progress value now; return how many.

        The pool host calls this every ``cleanup_interval`` seconds, which keeps the directory
        bounded by ``LONGTASK_RESULT_EXPIRE``.
        """
        return self.table.sweep() + int(self.cache.expire(retry=True))

    # -- execution ------------------------------------------------------------------------------

    @_storage
    def store_and_enqueue(self, job: NewJob) -> None:
        submits.one(self, job)

    @_storage
    def store_and_enqueue_many(self, jobs: t.Sequence[NewJob]) -> None:
        submits.many(self, jobs)

    def enqueue(self, request: JobRequest) -> None:
        pool = self._host
        if pool is not None and not pool.stopping.is_set():  # the pool runs here: no need for the FIFO
            pool.push_local(request.job_id, coroutine=request.task.is_coroutine)  # (.loops runs those)
        else:
            self._send(wire.Queued(request.job_id, request.task.is_coroutine))

    def enqueue_after(self, request: JobRequest, delay: float) -> None:
        """The pool host keeps the delay (a retry's backoff); if it dies meanwhile, the next host
        finds the job in storage and waits out what is left of it (``retry_at``)."""
        self._send(wire.Later(request.job_id, time.time() + delay, request.task.is_coroutine))

    def queue_length(self) -> int | None:
        """How many jobs the pool host has waiting; ``None`` while no process hosts the pool.

        Read from a small file the host rewrites as its queue changes (at most every 10 ms
        while it keeps changing, at once when it empties or fills): in other processes a job
        submitted a moment ago may not be counted yet, for up to a quarter of a second.
        """
        self.cache  # noqa: B018 - joins the election first, as a submit would
        pool = self._host
        if pool is not None:
            return pool.queued()
        return fifo.read_queued(self.directory)

    def terminate(self, job_id: str, grace: float) -> None:
        self._send(wire.Kill(job_id, time.time() + grace))

    def _send(self, message: wire.Line, *, warn: bool = True) -> None:
        self.cache  # noqa: B018 - opens the directory and joins the election first
        client = self._fifo
        if client is None:
            with self._lock:
                client = self._fifo = self._fifo or fifo.FifoClient(self.directory, lambda: self.cache)
        if (
            not client.send(message)
            and warn
            and not self._warned_no_host
            and not (self.embedded and not self._closed.is_set())
        ):
            self._warned_no_host = True
            _log.warning(
                "No worker pool serves %s: jobs wait until one starts. Run 'flask longtask worker',"
                " or set LONGTASK_EMBEDDED_WORKER = True.",
                self.directory,
            )

    def _close_storage(self) -> None:
        """Let go of the database, to be opened again by the next call. Other threads may be
        using it right now, so nothing is closed under them: each thread's connection is closed
        as the table (or cache) it belongs to is let go of, once no thread uses it any more
        (see :mod:`.connections`). The FIFO is opened again too (it may be a new one)."""
        with self._lock:
            self._table = self._cache = None
            client = self._fifo
        if client is not None:
            client.reset()

    def _host_stepped_down(self, pool: PoolHost) -> None:
        """The pool's host in this process stopped: its directory was removed or replaced. Open
        the new one next time, and take part in the election for its pool at once."""
        with self._lock:
            if self._host is not pool:
                return
            self._host = None
            self._elected = self._driving  # run_pool() hosts the new one itself
        self._close_storage()
        if not self._driving:
            self._join_election()

    @_storage
    def maintain(self) -> list[wire.Line]:
        """The pool host's chores, each tick: the mailbox's messages (taken out), the files of
        deleted values, a checkpoint of the write-ahead log."""
        messages = fifo.read_mailbox(self.cache)
        self.table.empty_trash()
        self.table.checkpoint()
        return messages

    def end_lost(self, job_id: str, how: str, error: dict[str, str] | None = None) -> None:
        """End a job whose worker process is gone (the pool calls this), in the job's own app
        when it is one of this backend's apps."""
        record = self.get(_keys.job(job_id))
        app = None
        if record is not MISSING:
            app = next((a for a in list(self._apps) if a.import_name == record.get("app")), None)
        mark_lost(self, job_id, how, app=app, error=error)

    # -- the pool -------------------------------------------------------------------------------

    @property
    def is_pool_host(self) -> bool:
        """Whether this process, through this backend, hosts the directory's worker pool."""
        return self._host is not None

    def _join_election(self) -> None:
        with self._lock:
            if self._elected:
                return
            self._elected = True
            if not self.embedded or child.current() or self._closed.is_set() or starting.bootstrapping():
                return
        if not self._try_to_host():
            threading.Thread(target=self._stand_by, name="longtask-standby", daemon=True).start()

    def _stand_by(self) -> None:
        while not self._closed.wait(TICK):
            if self._try_to_host(quiet=True):
                return

    def _try_to_host(self, *, quiet: bool = False) -> bool:
        """:meth:`_try_host`, and ``False`` when ``pool.lock`` cannot be opened for now (too
        many open files, permissions being changed): the standby thread tries again each tick.
        ``quiet``: the failure was logged already."""
        try:
            hosted = self._try_host(start=True)
        except OSError as exc:
            if not (quiet and self._lock_failing):
                _log.warning("Cannot take part in hosting the worker pool of %s yet: %s", self.directory, exc)
            self._lock_failing = True
            return False
        self._lock_failing = False
        return hosted

    def _try_host(self, *, start: bool) -> bool:
        fd = private.lock_pool(self.directory, LOCK_NAME, scripts.main_script())
        if fd is None:
            return False
        with self._lock:
            if self._closed.is_set():
                os.close(fd)
                return False
            try:  # (the lock is ours: on any failure from here, let go of it, or nobody hosts)
                pool = PoolHost(self, fd, self.workers, on_step_down=self._host_stepped_down)
            except BaseException:
                os.close(fd)
                raise
            if start:
                try:
                    pool.start()
                except BaseException:
                    pool.shutdown()  # (closes the lock's descriptor)
                    raise
            self._host = pool
        _log.info("Process %s hosts the worker pool of %s (%s).", os.getpid(), self.directory, self.pool_size())
        return True

    def run_pool(self) -> None:
        """Host the pool in this thread until :meth:`close` (or Ctrl+C): ``flask longtask worker``.

        Waits for the lock first if another process hosts the pool, and takes over when it exits.
        """
        self._driving = True
        while not self._closed.is_set():
            with self._lock:
                self._elected = True  # never start a background host as well
            self._open()
            while not self._try_host(start=False):
                if self._closed.wait(TICK):
                    return
            pool = t.cast(PoolHost, self._host)
            try:
                pool.run()
            finally:
                with self._lock:
                    if self._host is pool:
                        self._host = None
            if not pool.stepped_down:
                return

    def stop_pool(self) -> None:
        """Ask a pool run by :meth:`run_pool` to stop; safe in a signal handler."""
        self._closed.set()
        host = self._host
        if host is not None:
            host.stop()

    def close(self) -> None:
        """Stop the pool if this process hosts it (running jobs fail as "worker lost")."""
        self._closed.set()
        with self._lock:
            host, self._host = self._host, None
            client, self._fifo = self._fifo, None
        if host is not None:
            host.stop()
            if not host.ran:  # never entered its loop: release what it holds here
                host.shutdown()
        if client is not None:
            client.reset()
        if self._table is not None:
            self._table.close()
        if self._cache is not None:
            self._cache.close()
        if self._made_by == os.getpid():  # (a directory of its own, that nobody else may know)
            shutil.rmtree(self.directory, ignore_errors=True)

    def _after_fork(self) -> None:
        # A forked child shares our open files but not our threads: it hosts nothing, and must
        # not keep the lock alive after we die.
        if self._host is not None:
            self._host.forget()
        self._host = None
        self._fifo = None
        self._elected = False
        self._lock = threading.RLock()


def _close_all() -> None:
    for backend in list(_instances):
        if backend._host is not None:
            backend.close()


def _after_fork_in_child() -> None:
    for backend in list(_instances):
        backend._after_fork()


atexit.register(_close_all)
os.register_at_fork(after_in_child=_after_fork_in_child)
