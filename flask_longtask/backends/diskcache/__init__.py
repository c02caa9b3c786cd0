"""DiskcacheBackend: state in a diskcache directory, jobs in a persistent pool of processes."""

from __future__ import annotations

import atexit
import fcntl
import logging
import os
import pickle
import threading
import time
import typing as t
import weakref

try:
    import dill
    import diskcache
    import multiprocess  # noqa: F401 - used by _pool; checked here, once
except ImportError as err:  # pragma: no cover - depends on the environment
    raise ImportError(
        'DiskcacheBackend needs "diskcache" and "multiprocess" (dependencies of Flask-LongTask):'
        ' pip install "diskcache>=5.6" "multiprocess>=0.70.15"'
    ) from err

from ..base import MISSING, Backend, JobRequest, Write
from . import child as _poolworker
from . import host as _pool
from .table import Claim, Table

if t.TYPE_CHECKING:  # pragma: no cover
    from flask import Flask

_log = logging.getLogger(__name__)

#: Every live backend that may host a pool: closed at exit, reset in a forked child.
_instances: weakref.WeakSet[DiskcacheBackend] = weakref.WeakSet()
#: Arguments up to this size (bytes, serialised) go to the worker with the job, which then fits
#: in a pipe's buffer (a submit never waits for the worker to read); larger ones it reads from
#: storage.
_INLINE_ARGS = 32 * 1024


class DiskcacheBackend(Backend):
    """Keep job state in a diskcache directory and run jobs in a persistent pool of processes.

    The default backend. Every process that opens the same directory on the same host -- the
    workers of gunicorn, the Flask reloader, ``flask longtask`` commands -- shares the same
    jobs, progress, results and memo cache. Exactly one of them hosts the pool of ``workers``
    processes: the first to use the backend wins an ``flock`` on the directory, and when it dies
    another takes over, fails the jobs that were running there ("worker lost") and runs the jobs
    still queued. Worker processes are started once (``spawn``: no lock of a threaded server is
    ever inherited) and reused; at most ``workers`` jobs run at once, the rest wait in FIFO order
    (a job sent ahead to a busy worker whose job then runs long is given back within a tick of
    ``LONGTASK_PROGRESS_INTERVAL``; see the backends documentation).
    A job that ignores cancellation is ended by stopping its process after
    ``LONGTASK_CANCEL_GRACE`` seconds; a worker that dies fails its job, saying how, and is
    replaced. POSIX only (``flock`` and a named pipe).

    >>> import tempfile
    >>> backend = DiskcacheBackend(tempfile.mkdtemp(), workers=2)
    >>> backend.set("greeting", "hello")
    >>> backend.get("greeting")
    'hello'
    >>> backend.close()

    :param directory: the diskcache directory; created if missing. ``from_app`` uses
        ``LONGTASK_DISKCACHE_DIR``, by default ``<instance folder>/longtask``.
    :param workers: the pool's size when this process hosts it (default: the CPU count).
    :param embedded: whether this process may host the pool. ``False`` for web processes when
        ``flask longtask worker`` runs the pool (``LONGTASK_EMBEDDED_WORKER = False``).
    :param cleanup_interval: seconds between sweeps of expired records by the pool host.
    :param start_method: how worker processes start: ``"forkserver"`` (default: forked from a
        clean single-threaded server process, fast) or ``"spawn"`` (a new interpreter each).
        Never ``"fork"``: a fork of a threaded web process can inherit a held lock.
    """

    can_terminate = True

    def __init__(
        self,
        directory: str | os.PathLike[str] | None = None,
        workers: int | None = None,
        *,
        embedded: bool = True,
        cleanup_interval: float = 60.0,
        start_method: str = "forkserver",
    ) -> None:
        if start_method not in ("forkserver", "spawn"):
            raise ValueError(f"start_method must be 'forkserver' or 'spawn', not {start_method!r}.")
        if directory is None:
            import tempfile

            directory = os.path.join(tempfile.gettempdir(), "flask-longtask")
        self.directory = os.path.abspath(os.fspath(directory))
        self.workers = workers or os.cpu_count() or 1
        self.embedded = embedded
        self.cleanup_interval = cleanup_interval
        self.start_method = start_method
        self._cache: diskcache.Cache | None = None
        self._table: Table | None = None
        self._lock = threading.RLock()
        self._elected = False  # whether this process has joined the election for the pool
        self._closed = threading.Event()
        self._host: _pool.PoolHost | None = None
        self._fifo: _pool.FifoClient | None = None
        self._apps: weakref.WeakSet[Flask] = weakref.WeakSet()
        self._warned_no_host = False
        #: In a pool worker: ``(job id, writes)`` of the last job end written here.
        self._end: tuple[str, t.Sequence[Write]] | None = None
        #: In a pool worker: the job it was sent ahead and claimed as it ended the last (take_next()).
        self._next: tuple[str, Claim] | None = None
        _instances.add(self)

    def __repr__(self) -> str:
        return f"<DiskcacheBackend {self.directory!r} workers={self.workers}>"

    @classmethod
    def from_app(cls, app: Flask) -> DiskcacheBackend:
        directory = app.config.get("LONGTASK_DISKCACHE_DIR") or os.path.join(app.instance_path, "longtask")
        return cls(
            directory,
            workers=app.config.get("LONGTASK_WORKERS"),
            embedded=bool(app.config.get("LONGTASK_EMBEDDED_WORKER", True)),
        )

    def init_app(self, app: Flask) -> None:
        self._apps.add(app)
        if not app.config.get("LONGTASK_EMBEDDED_WORKER", True):
            self.embedded = False  # even for a backend passed in: the app's config says no pool here

    # -- serialisation --------------------------------------------------------------------------

    def dumps(self, value: t.Any) -> bytes:
        """Pickle ``value``; values plain pickle refuses (lambdas, closures) go through dill."""
        try:
            return pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
        except (pickle.PicklingError, TypeError, AttributeError):
            return t.cast(bytes, dill.dumps(value, protocol=pickle.HIGHEST_PROTOCOL))

    # -- storage --------------------------------------------------------------------------------

    @property
    def cache(self) -> diskcache.Cache:
        """The :class:`diskcache.Cache` of the directory; opening it joins the pool election.

        Job keys are not in it but in a lean table of the same database (see
        :mod:`flask_longtask.backends._table`); it holds the pool's mailbox.
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

    def _open(self) -> tuple[diskcache.Cache, Table]:
        with self._lock:
            if self._cache is None or self._table is None:
                try:
                    cache = diskcache.Cache(
                        self.directory,
                        eviction_policy="none",  # nothing in it may be evicted for space
                        statistics=False,
                        cull_limit=0,  # expired rows are swept by the pool host, not on each write
                    )
                    try:
                        disk = diskcache.Disk(
                            self.directory, min_file_size=2**20, pickle_protocol=pickle.HIGHEST_PROTOCOL
                        )
                        self._table = Table(os.path.join(self.directory, diskcache.core.DBNAME), disk)
                    except BaseException:
                        cache.close()
                        raise
                    self._cache = cache
                except Exception as exc:
                    raise RuntimeError(
                        f"DiskcacheBackend cannot open its directory {self.directory!r}: {exc}."
                        " Check that it exists, is writable and holds a diskcache (delete a corrupted"
                        " one), or set LONGTASK_DISKCACHE_DIR to another directory."
                    ) from exc
            return self._cache, self._table

    def get(self, key: str) -> t.Any:
        return self.table.get(key)

    def get_many(self, keys: t.Sequence[str]) -> list[t.Any]:
        return self.table.get_many(keys)

    def set(self, key: str, value: t.Any, expire: float | None = None) -> None:
        self.table.set(key, value, expire)

    def add(self, key: str, value: t.Any, expire: float | None = None) -> bool:
        return self.table.add(key, value, expire)

    def delete(self, key: str) -> None:
        self.table.delete(key)

    def delete_if(self, key: str, value: t.Any) -> bool:
        return self.table.delete_if(key, value)

    def claim_and_get(
        self, key: str, value: t.Any, expire: float | None, keys: t.Sequence[str]
    ) -> tuple[bool, list[t.Any]]:
        return self.table.claim_and_get(key, value, expire, keys)

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
        then_claim = next_id = None
        if _poolworker.IN_WORKER and key == f"end:{_poolworker.RUNNING}":
            # A pool worker ends its job: when the pool sent it its next job ahead, it claims
            # that one in the same transaction (one commit and one lock instead of two). Not
            # when the job ends cancelled: the host may be about to stop it by force, and the
            # next job must not be running then.
            next_id = _poolworker.take_ahead(cancelled=_ends_cancelled(key[4:], writes))
            if next_id is not None:
                then_claim = self._next_claim(next_id)
        chosen = self.table.add_then_write(
            key, value, expire, writes, unless=unless, otherwise=otherwise, then_claim=then_claim
        )
        if then_claim is not None and next_id is not None:
            if then_claim.tried:
                self._next = (next_id, then_claim)
            else:  # ended otherwise (cancelled, or by someone else): the job goes back
                _poolworker.give_back(next_id)
        if chosen is not None and key.startswith("end:"):
            job_id = key[4:]
            if _poolworker.IN_WORKER and job_id == _poolworker.RUNNING:
                # A pool worker sends what its job's end wrote with its "done" (see take_end()).
                self._end = (job_id, writes if chosen else otherwise)
            else:
                # Ended outside the pool's workers' own jobs (cancelled while queued, found
                # lost): the host's process, whose waiters hear of ends from the pool, hears of
                # this one too.
                self._announce_end(job_id)
        return chosen

    def _announce_end(self, job_id: str) -> None:
        host = self._host
        if host is not None:
            host.announce_end(job_id)
        elif not self._closed.is_set():
            try:
                self._send(f"e {job_id}", warn=False)
            except Exception:  # only a wake-up: waiters look at storage again soon anyway
                _log.debug("Could not tell the pool host that job %s ended.", job_id, exc_info=True)

    @property
    def ends_wake_waiters(self) -> bool:  # type: ignore[override]
        """True in the process hosting the pool, where a job's end wakes its waiters whichever
        process ends it: its worker's "done", or the word of the process that ended it."""
        return self._host is not None

    def tracks_end(self, job_id: str) -> bool:
        """True in the pool's host for a job its pool runs or queues, or ended moments ago
        (see :meth:`PoolHost.tracks <flask_longtask.backends._pool.PoolHost.tracks>`)."""
        host = self._host
        return host is not None and host.tracks(job_id)

    #: A worker sends its "done" after the job's end signals and app-context teardown (user
    #: code, which may be slow): look at storage this often meanwhile, as polling would.
    recheck_interval = 0.05

    def _next_claim(self, job_id: str) -> Claim:
        from ...store import JobStore
        from ...worker import claim_value, job_keys

        return Claim(f"claim:{job_id}", claim_value(), JobStore(self).claim_expire, job_keys(job_id))

    def take_next(self) -> tuple[str, Claim] | None:
        """In a pool worker: the job it claimed (or tried to) as it ended the last one, with
        what that claim read, then forgotten; ``None`` if it had no job ahead then."""
        taken, self._next = self._next, None
        return taken

    def take_end(self, job_id: str) -> dict[str, t.Any] | None:
        """In a pool worker: the values the end of job ``job_id`` wrote here (``None`` if some
        other process ended it), then forgotten."""
        end, self._end = self._end, None
        if end is None or end[0] != job_id:
            return None
        return {key: value for op, key, value, _ in end[1] if op == "set"}

    def write_all(self, writes: t.Sequence[Write]) -> None:
        self.table.write_all(writes)

    def batch(self) -> t.ContextManager[None]:
        # One SQLite transaction for a job step: a write costs its commit, not its row.
        return self.table.batch()

    def scan(self, prefix: str) -> t.Iterator[str]:
        return iter(self.table.scan(prefix))

    def cleanup(self) -> int:
        """Remove every expired record, result and progress value now; return how many.

        The pool host calls this every ``cleanup_interval`` seconds, which keeps the directory
        bounded by ``LONGTASK_RESULT_EXPIRE``.
        """
        return self.table.sweep() + int(self.cache.expire(retry=True))

    # -- execution ------------------------------------------------------------------------------

    def store_and_enqueue(self, writes: t.Sequence[Write], request: JobRequest, announce: t.Callable[[], None]) -> None:
        # In the process hosting the pool, with a worker idle: the job's records, and the claim
        # for that worker, in one transaction; the worker gets the job with its record and
        # request, and runs it without a transaction or a read of its own.
        #
        # It gets the job while the transaction is written, so that its wake-up and its
        # preparation overlap the commit; it starts the job only on the "go" sent after the
        # commit ("no" if the commit failed: then nothing ran). Its own writes (the job's end,
        # its heartbeat) queue behind the writers' lock this transaction holds.
        host = self._host
        # (Not inside a caller's batch: its commit, and so the go, would come later.)
        slot = host.reserve(request.job_id) if host is not None and not self.table.in_batch else None
        if host is None or slot is None:
            super().store_and_enqueue(writes, request, announce)
            return
        from ...store import CLAIM_EXPIRE
        from ...worker import owner_of

        job_id = request.job_id
        values = {key: value for _, key, value, _ in writes}
        record, job_request = values[f"job:{job_id}"], values[f"request:{job_id}"]
        started = time.time()
        claim = {"by": owner_of(slot.process.pid, 0), "at": started}
        inline = job_request if len(job_request["args"]) <= _INLINE_ARGS else None
        message = b"P" + pickle.dumps((job_id, (started, record, inline)), pickle.HIGHEST_PROTOCOL)
        handed = False

        def hand_over() -> None:  # under the writers' lock: the worker's writes wait for the commit
            nonlocal handed
            handed = host.hand_over(slot, job_id, message)

        try:
            self.table.write_all(
                [*writes, ("set", f"claim:{job_id}", claim, max(CLAIM_EXPIRE, record["expire"]))], locked=hand_over
            )
        except BaseException:
            if handed:
                host.go(slot, False)
            host.unreserve(slot, job_id)
            raise
        if not handed or not host.go(slot, True):
            # The worker died after it was reserved: the job is claimed for a process that is
            # gone. (If its death is handled after the commit, the pool fails the job too.)
            self._lost(job_id, "its worker process died before it could start the job")
        # The signal after the go: job_started is sent in the worker's process, once the job
        # is stored, so no receiver here can see the two out of order.
        announce()

    def enqueue(self, request: JobRequest) -> None:
        host = self._host
        if host is not None:  # the pool runs here: no need for the FIFO
            host.push_local(request.job_id)
        else:
            self._send(f"q {request.job_id}")

    def queue_length(self) -> int | None:
        """How many jobs the pool host has waiting; ``None`` while no process hosts the pool.

        Read from a small file the host rewrites as its queue changes (at most every 10 ms
        while it keeps changing, at once when it empties or fills): in other processes a job
        submitted a moment ago may not be counted yet, for up to a quarter of a second.
        """
        self.cache  # noqa: B018 - joins the election first, as a submit would
        host = self._host
        if host is not None:
            return host.queued()
        try:
            with open(os.path.join(self.directory, _pool.QUEUED_NAME), "rb") as f:
                text = f.read(64).strip()
        except FileNotFoundError:
            return None
        return int(text) if text.isdigit() else None

    def wait_for_end(self, job_id: str, timeout: float) -> dict[str, t.Any] | None:
        host = self._host
        if host is None:  # the pool runs in another process: poll
            time.sleep(timeout)
            return None
        # It runs here: woken the moment a worker reports the job done (or lost), with what
        # the job's end wrote when the worker sent it.
        return host.wait_done(job_id, timeout)

    def terminate(self, job_id: str, grace: float) -> None:
        self._send(f"k {job_id} {time.time() + grace:.3f}")

    def _send(self, line: str, *, warn: bool = True) -> None:
        self.cache  # noqa: B018 - opens the directory and joins the election first
        fifo = self._fifo
        if fifo is None:
            with self._lock:
                fifo = self._fifo = self._fifo or _pool.FifoClient(self)
        if (
            not fifo.send(line)
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

    def _lost(self, job_id: str, how: str) -> None:
        """End a job whose worker process is gone, in the job's own app when it is ours."""
        from ...store import JobStore

        record = self.get(f"job:{job_id}")
        app = None
        if record is not MISSING:
            app = next((a for a in list(self._apps) if a.import_name == record.get("app")), None)
        if app is None:
            JobStore(self).mark_lost(job_id, how)
            return
        with app.app_context():
            JobStore.from_config(self, app.config).mark_lost(job_id, how, app=app)

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
            if not self.embedded or _poolworker.IN_WORKER or self._closed.is_set():
                return
        if not self._try_host(start=True):
            threading.Thread(target=self._stand_by, name="longtask-standby", daemon=True).start()

    def _stand_by(self) -> None:
        while not self._closed.wait(_pool.TICK):
            if self._try_host(start=True):
                return

    def _try_host(self, *, start: bool) -> bool:
        os.makedirs(self.directory, exist_ok=True)
        fd = os.open(os.path.join(self.directory, _pool.LOCK_NAME), os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        except BaseException:
            os.close(fd)
            raise
        with self._lock:
            if self._closed.is_set():
                os.close(fd)
                return False
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()}\n".encode())
            self._host = host = _pool.PoolHost(self, fd, self.workers)
            if start:
                host.start()
        _log.info("Process %s hosts the worker pool of %s (%d workers).", os.getpid(), self.directory, self.workers)
        return True

    def run_pool(self) -> None:
        """Host the pool in this thread until :meth:`close` (or Ctrl+C): ``flask longtask worker``.

        Waits for the lock first if another process hosts the pool, and takes over when it exits.
        """
        with self._lock:
            self._elected = True  # never start a background host as well
        self._open()
        while not self._try_host(start=False):
            if self._closed.wait(_pool.TICK):
                return
        host = t.cast(_pool.PoolHost, self._host)
        try:
            host.run()
        finally:
            self._host = None

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
            fifo, self._fifo = self._fifo, None
        if host is not None:
            host.stop()
            if not host.ran:  # never entered its loop: release what it holds here
                host._shutdown()
        if fifo is not None:
            fifo.reset()
        if self._table is not None:
            self._table.close()
        if self._cache is not None:
            self._cache.close()

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


def _ends_cancelled(job_id: str, writes: t.Sequence[Write]) -> bool:
    """Whether the writes that end job ``job_id`` end it "cancelled"."""
    for _, key, value, _ in writes:
        if key == f"job:{job_id}":
            return isinstance(value, dict) and value.get("status") == "cancelled"
    return False
