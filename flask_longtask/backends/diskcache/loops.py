"""Workers of coroutine jobs: processes that run many ``async def`` jobs at once on one loop.

A coroutine job (its task an ``async def``: the record says ``coroutine``, and its ``Queued``
line ends in ``a``) waits in the queue's own line for them (:class:`~.jobqueue.JobQueue`), and
goes to a *loop worker*: a process of the pool kept apart from the others (``Loops.workers``,
not ``PoolHost.workers``), so that none of the other workers' bookkeeping (the hand-over, jobs
sent ahead, the elastic judgements, waiters reading a pipe) sees it. Each loop worker has
``LONGTASK_ASYNC_CONCURRENCY`` slots; the host sends it ``Run(id)`` while it has a free slot,
and starts another loop worker only when every one is full (up to the pool's ceiling, which
counts both kinds of worker: :meth:`Loops.full`), so the pool never grows for coroutine jobs
while a slot is free. A loop worker idle for
``worker_idle`` seconds exits, as an elastic worker does.

In the process, the main thread reads the pipe; each ``Run`` goes to a thread (kept for the
next job once its own has ended: :class:`KeptThreads`) that runs
:func:`~flask_longtask.worker.execute` (claim, end: the same steps as any job), which runs the
coroutine on the process's one event loop (:mod:`flask_longtask.coroutines`) and waits for it;
the thread then sends ``Done(id)``. A cancel or a time limit reaches the coroutine as
``CancelledError`` from the job's own ticker; the host does not stop a loop worker by force at a
``Kill``'s deadline (its neighbours would die with it): the job's thread owns that deadline. If
the cancelled coroutine still blocks the loop at its end, the thread sends ``Failing(reason)``
and the process exits: the host fails every job it ran with that reason (the cancelled one ends
cancelled), and the next coroutine jobs go to a new loop worker. If it awaits (it swallowed the
``CancelledError``), the worker says ``Draining``: the host sends it no more jobs and retires it
once its other jobs have ended, the leftover with it. A watchdog thread stops the worker the
same way if its loop stays blocked past the heartbeat timeout and grace, and so does a job that
raises ``SystemExit``, as a sync worker's process exits. See ``docs/internals.md``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import signal
import threading
import time
import typing as t

from ... import coroutines
from ...config import DEFAULT_CONFIG
from ...job import JobStatus
from ...store import CLAIM_EXPIRE, keys
from ...worker import Handoff, execute
from . import recovery, wire
from .elastic import release_retired
from .handoff import INLINE_ARGS, RESERVE_WAIT
from .workers import RETIRE, Worker, exit_reason, start_process

if t.TYPE_CHECKING:  # pragma: no cover
    from ..base import JobEnd, NewJob
    from . import DiskcacheBackend
    from .host import PoolHost

_log = logging.getLogger(__name__)


class Loops:
    """The host's loop workers, and what each runs (under the host's mutex)."""

    def __init__(self, host: PoolHost, concurrency: int, ceiling: int) -> None:
        self.host = host
        #: Coroutine jobs a loop worker runs at once.
        self.concurrency = concurrency
        #: The pool's ceiling, which counts both kinds of worker (see :meth:`full`).
        self.ceiling = max(1, ceiling)
        self.workers: list[Worker] = []
        #: Jobs handed over (claimed in the submit's transaction): lost, never requeued, if
        #: their worker dies.
        self.handed: set[str] = set()
        #: After a loop worker died at its start (an import error...), none starts before this
        #: (monotonic), the wait doubling from 0.1 s up to 5 s, as for the other workers.
        self.next_spawn, self.delay = 0.0, 0.0
        #: Retired loop workers, until their process has exited (or is killed at the deadline).
        self.retiring: list[tuple[Worker, float]] = []

    def reserve(self, job_ids: t.Sequence[str]) -> list[Worker]:
        """Slots for coroutine jobs submitted in the host's process, before their records are
        written: a worker for each of the first jobs while one has a free slot; none when
        coroutine jobs wait (they go first) or the dispatcher is busy."""
        host = self.host
        if host.queue.coroutines() or not host.mutex.acquire(timeout=RESERVE_WAIT):
            return []
        taken: list[Worker] = []
        try:
            if host.queue.coroutines() or host.inbox or host.stopping.is_set():
                return taken
            for job_id in job_ids:
                worker = self._free()
                if worker is None:
                    break
                worker.coroutines.add(job_id)
                worker.idle_since = None
                self.handed.add(job_id)
                host.queue.know(job_id)
                taken.append(worker)
            return taken
        finally:
            host.mutex.release()

    def _free(self) -> Worker | None:
        """The first loop worker with a free slot that takes jobs (not failing, not draining)."""
        return next(
            (w for w in self.workers if len(w.coroutines) < self.concurrency and not (w.reason or w.draining)), None
        )

    def full(self) -> bool:
        """Whether no loop worker may start: one pool ceiling counts both kinds of worker (and
        those retiring), with room kept for the sync workers' minimum not yet started; but the
        first loop worker that takes jobs may always start, so that coroutine jobs run beside sync workers that
        fill the ceiling (the pool then runs one process over it)."""
        if not any(worker.reason is None and not worker.draining for worker in self.workers):
            return False
        host = self.host
        sync = max(len(host.workers), host.size) + len(host.elastic.retiring)
        return len(self.workers) + len(self.retiring) + sync >= self.ceiling

    def unreserve(self, taken: t.Iterable[tuple[Worker, str]]) -> None:
        with self.host.mutex:
            for worker, job_id in taken:
                worker.coroutines.discard(job_id)
                self.handed.discard(job_id)
                self.host.queue.forget(job_id)

    def runs(self, job_id: str) -> bool:
        """Whether a loop worker runs this job (its deadlines are its own)."""
        return any(job_id in worker.coroutines for worker in self.workers)

    def running(self) -> set[str]:
        return {job_id for worker in self.workers for job_id in worker.coroutines}

    def dispatch(self, *, spawn: bool = True) -> bool:
        """Send the waiting coroutine jobs to loop workers with a free slot, starting one when
        all are full (``spawn``: not from a thread that submits); whether any still wait."""
        queue = self.host.queue
        while queue.coroutines():
            worker = self._free()
            if worker is None:
                if not spawn or self.full() or time.monotonic() < self.next_spawn:
                    return True
                worker = self._spawn()
            job_id = queue.pop_coroutine()
            if not worker.send(wire.Run(job_id)):
                queue.unpop(job_id)
                return True
            worker.coroutines.add(job_id)
            worker.idle_since = None
        return False

    def _spawn(self) -> Worker:
        host = self.host
        worker = start_process(host._ctx, loop_main, host.backend.directory, host.backend.storage_secret())
        self.workers.append(worker)
        return worker

    # -- their messages -------------------------------------------------------------------------

    def read(self, ready: set[int]) -> None:
        """Handle the messages of the loop workers whose pipes are ready; reap the dead."""
        for worker in list(self.workers):
            if worker.frames.fd in ready:
                self._read(worker)
            if worker.sentinel in ready:
                self.reap(worker)
            elif worker.draining and not worker.coroutines:
                self._retire(worker, time.monotonic())

    def _read(self, worker: Worker) -> None:
        if not worker.readable():
            return
        while True:
            try:
                data = worker.frames.recv()
            except (EOFError, OSError):
                worker.eof = True  # it died: the sentinel says how
                return
            message = wire.decode_from_worker(data)
            if isinstance(message, wire.Failing):
                worker.reason = message.reason
            elif isinstance(message, wire.Draining):  # no more jobs to it; retired once it has none
                worker.draining = True
                _log.debug("Pool worker %s drains: %s.", worker.pid, message.reason)
            elif isinstance(message, wire.Done):
                host, job_id = self.host, message.job_id
                worker.coroutines.discard(job_id)
                self.handed.discard(job_id)
                host.queue.forget(job_id)
                worker.settled, self.delay = True, 0.0
                host.kills.pop(job_id, None)
                host.requeued.discard(job_id)
                if not message.again:  # (a retry is no end: Later queues it again)
                    host.ends.add(job_id, message.values, len(data))
            if not worker.frames.has_message():
                return

    def reap(self, worker: Worker, how: str | None = None) -> None:
        """A loop worker died: each of its jobs is lost (or queued again if never claimed)."""
        host = self.host
        worker.process.join()
        self._read(worker)
        reason = how or worker.reason or exit_reason(worker.process.exitcode)
        self.workers.remove(worker)
        worker.close()
        # Died as it started (it said why: .starting; or it never ended a job): back off, as
        # recovery.reap does for the other workers.
        if how is None and not worker.settled and (worker.error is not None or worker.reason is None):
            self.delay = min(max(self.delay * 2, recovery.START_BACKOFF), recovery.START_BACKOFF_MAX)
            self.next_spawn = time.monotonic() + self.delay
            if not host.stopping.is_set():
                _log.error(
                    "A pool worker of coroutine jobs of %s died as it started: %s.", host.backend.directory, reason
                )
        for job_id in sorted(worker.coroutines):
            host.kills.pop(job_id, None)
            if job_id in host.later:
                host.queue.forget(job_id)
            elif worker.error is not None:  # it failed as it started, and said why: so does the job
                recovery.lost(host, job_id, reason, error=worker.error)
            elif job_id not in (host.requeued | self.handed) and recovery.never_claimed(host, job_id):
                host.requeued.add(job_id)
                host.queue.requeue(job_id)
            else:
                recovery.lost(host, job_id, reason)
            self.handed.discard(job_id)
        worker.coroutines.clear()

    # -- retiring, shutting down -----------------------------------------------------------------

    def tick(self, now: float) -> None:
        """Retire the loop workers idle for ``worker_idle``; release those that exited."""
        for worker in list(self.workers):
            if worker.coroutines or worker.reason is not None:
                continue
            if worker.idle_since is None and not worker.draining:
                worker.idle_since = now
            elif worker.draining or now - (worker.idle_since or now) >= self.host.backend.worker_idle:
                if not worker.readable():  # (a message, or its death, waits: read it first)
                    self._retire(worker, now)
        self.retiring = release_retired(self.retiring, now)

    def _retire(self, worker: Worker, now: float) -> None:
        """Close an idle loop worker's pipe and lifeline (it exits at once, a draining one's
        leftover coroutine with it): a retirement, not a death."""
        self.workers.remove(worker)
        if not worker.close():
            self.retiring.append((worker, now + RETIRE))

    def shutdown(self, deadline: float) -> None:
        for worker in self.workers:
            if worker.stop(deadline):
                self._read(worker)
            for job_id in worker.coroutines:
                try:
                    if not recovery.never_claimed(self.host, job_id):
                        recovery.lost(self.host, job_id, "the worker pool was shut down while it ran")
                except Exception:
                    _log.exception("Worker pool: could not record the end of job %s.", job_id)
            worker.close()
        for worker, _ in self.retiring:
            worker.stop(deadline)
            worker.close()
        self.workers, self.retiring = [], []


def submit(backend: DiskcacheBackend, host: PoolHost, job: NewJob) -> bool:
    """Store a coroutine job submitted in the host's process, claimed for a loop worker with a
    free slot in the same transaction, then hand it over (its record and request: the worker
    neither claims nor reads it); ``False`` (nothing done) when no slot is free."""
    return not submit_many(backend, host, [job], all_or_none=True)


def submit_many(
    backend: DiskcacheBackend, host: PoolHost, jobs: t.Sequence[NewJob], *, all_or_none: bool = False
) -> t.Sequence[NewJob]:
    """Store coroutine jobs submitted in the host's process in one transaction, those that fit
    in loop workers' free slots claimed for them, and hand those over; the jobs left for the
    caller to queue (stored and announced, unless ``all_or_none`` and a slot was missing: then
    nothing was done, and all are left)."""
    from ...worker import owner_of

    taken = host.loops.reserve([job.id for job in jobs])
    given = list(zip(jobs, taken, strict=False))  # (the first jobs, each with its worker)
    if all_or_none and len(taken) < len(jobs):
        host.loops.unreserve((worker, job.id) for job, worker in given)
        return jobs
    started = time.time()
    writes = [write for job in jobs for write in job.writes]
    for job, worker in given:
        claimed = {"by": owner_of(worker.pid, 0), "at": started}
        writes.append(("set", keys.claim(job.id), claimed, max(CLAIM_EXPIRE, job.record["expire"])))
    try:
        backend.table.write_all(writes, entries=[job.entry for job in jobs])
    except BaseException:
        host.loops.unreserve((worker, job.id) for job, worker in given)
        raise
    for job, worker in given:
        arguments = job.arguments
        request = arguments if len(arguments["args"]) <= INLINE_ARGS else None
        if not worker.send(wire.Handover(job.id, started, job.record, request)) or worker not in host.loops.workers:
            # It died after it was reserved (its reap may have come before the commit, and found
            # nothing to end): the job is claimed for a process that is gone.
            backend.end_lost(job.id, "its worker process died before it could start the job")
        job.announce()
    left = jobs[len(taken) :]
    for job in left:
        job.announce()
    return left


class Together:
    """In a worker of coroutine jobs: the ends of its jobs, written together.

    Coroutine jobs that wait on the same thing end together (200 jobs that each sleep 0.2 s end
    within milliseconds of each other), and each end is a transaction that takes the writers'
    lock and commits. The first job's thread to end writes every end that waits in one
    transaction, then wakes the next one waiting, if any, to write those that came meanwhile: a
    group commit. Each end is its own ``add_then_write`` (its own claim and outcome); a
    transaction that fails fails every end in it, each of which its job's thread meets as its
    own error (and tries again, through ``Patience``, if the error is transient).
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pending: list[_End] = []
        self._writing = False
        #: What each job's end wrote, for its Done (a waiter in the host's process need not
        #: read it): job id -> values, taken by :meth:`written`.
        self._values: dict[str, dict[str, t.Any]] = {}
        #: The jobs this worker runs: only their ends come here (a job's thread may end others:
        #: cancel a queued one, find one lost; those are written and announced as anywhere).
        self.running: set[str] = set()

    def written(self, job_id: str) -> dict[str, t.Any] | None:
        """What the end of ``job_id`` wrote, if this worker wrote it (once)."""
        with self._lock:
            return self._values.pop(job_id, None)

    def end_job(self, backend: DiskcacheBackend, end: JobEnd) -> bool | None:
        mine = _End(end)
        with self._lock:
            self._pending.append(mine)
            if not self._writing:
                self._writing = mine.lead = True
        if not mine.lead:
            mine.woken.wait()  # written by another thread, or this one leads now
        if not mine.written:
            with self._lock:
                batch, self._pending = self._pending, []
            self._write(backend, batch)
            with self._lock:
                if self._pending:
                    self._pending[0].lead = True
                    self._pending[0].woken.set()
                else:
                    self._writing = False
        if mine.error is not None:
            raise mine.error
        if mine.chosen is not None:
            with self._lock:
                self._values[end.job_id] = end.values(mine.chosen)
        return mine.chosen

    @staticmethod
    def _write(backend: DiskcacheBackend, batch: list[_End]) -> None:
        table = backend.table
        try:
            with table.batch():
                for item in batch:
                    e = item.end
                    item.chosen = table.add_then_write(
                        e.key, e.at, e.expire, e.writes, unless=e.unless, otherwise=e.otherwise, ended=e.ended
                    )
        except BaseException as exc:
            for item in batch:
                item.chosen, item.error = None, exc
        finally:
            for item in batch:
                item.written = True
                item.woken.set()


class _End:
    __slots__ = ("chosen", "end", "error", "lead", "woken", "written")

    def __init__(self, end: JobEnd) -> None:
        self.end = end
        self.chosen: bool | None = None
        self.error: BaseException | None = None
        self.lead = self.written = False
        self.woken = threading.Event()


#: The ends of this process's jobs, when it is a worker of coroutine jobs (``None`` elsewhere):
#: they reach the host in its ``Done`` messages, and are not also announced through the FIFO.
together: Together | None = None


# -- the loop worker's process ---------------------------------------------------------------------


def loop_main(directory: str, secret: str | bytes, conn: t.Any, lifeline: t.Any) -> None:
    """The body of a loop worker process: a thread per coroutine job it runs (:class:`KeptThreads`)."""
    from . import DiskcacheBackend
    from .child import _watch_lifeline

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl+C reaches the host, which ends us
    threading.Thread(target=_watch_lifeline, args=(lifeline,), name="longtask-lifeline", daemon=True).start()
    backend = DiskcacheBackend(directory, embedded=False, secret_key=secret)
    send_lock = threading.Lock()
    draining = threading.Event()

    def send(message: wire.Done | wire.Failing | wire.Draining) -> None:
        with send_lock:
            conn.send_bytes(message.encode())

    def stuck(reason: str, blocked: bool) -> None:
        if not blocked:  # it awaits: no more jobs here; the host retires us once the others end
            if not draining.is_set():
                draining.set()
                send(wire.Draining(reason))
            return
        stop(reason + STOPPED, 71)

    def stop(reason: str, code: int) -> t.NoReturn:
        _log.error("Pool worker %s exits: %s.", os.getpid(), reason)
        with contextlib.suppress(OSError, ValueError):  # (the host is gone: exit all the same)
            send(wire.Failing(reason))
        os._exit(code)

    def run(job_id: str, handoff: Handoff | None) -> None:
        mine = t.cast(Together, together)
        mine.running.add(job_id)
        try:
            again = execute(backend, job_id, handoff=handoff) is JobStatus.QUEUED
        except Exception as exc:  # storage failed under the job: as in a worker of other jobs
            _log.exception("Job %s: its outcome could not be stored.", job_id)
            stop(f"the worker could not store the job's outcome: {type(exc).__name__}: {exc}", 70)
        except BaseException as exc:  # SystemExit, KeyboardInterrupt: its end is written; as a
            # sync worker's process, this one exits, and the host reaps it (the others are lost)
            how = f"a coroutine job ({job_id}) raised {type(exc).__name__}"
            stop(f"{how}: the worker process exited, with every coroutine job it ran", 72)
        finally:
            mine.running.discard(job_id)
        send(wire.Done(job_id, mine.written(job_id), None, again))

    coroutines.on_stuck = stuck
    global together
    together = Together()
    loop = coroutines.shared()  # (its loop from the start: the first job does not wait for it)
    died_of = _Died()
    hook = threading.excepthook

    def died(args: t.Any) -> None:  # (what ended the loop's thread, if it ends: for the watchdog's reason)
        if args.thread is loop.thread:
            died_of.name = args.exc_type.__name__
        hook(args)

    threading.excepthook = died
    threading.Thread(target=_watch_loop, args=(loop, died_of, stop), name="longtask-watchdog", daemon=True).start()
    threads = KeptThreads()
    while True:
        try:
            message = wire.decode_to_worker(conn.recv_bytes())
        except (EOFError, OSError):  # pragma: no cover - the host went away; the lifeline ends us first
            return
        handoff = None
        if isinstance(message, wire.Handover):  # claimed and stored already: no Go follows
            handoff = Handoff(message.started, message.record, message.request)
        elif not isinstance(message, wire.Run):  # pragma: no cover - nothing else is sent here
            continue
        threads.run(run, message.job_id, handoff)


#: How a loop worker's jobs end when it stops for one of them.
STOPPED = ": the worker process was stopped, with every coroutine job it ran"
#: How often a loop worker's watchdog looks at its loop (seconds).
WATCH = 0.25


def _watch_loop(loop: coroutines.Loop, died_of: _Died, stop: t.Callable[[str, int], None]) -> None:
    """A loop worker's watchdog: a loop that has missed its pulse for longer than the heartbeat
    timeout and the cancel grace of the job that blocks it (those of :data:`.config` when it
    cannot be told) will not turn again in time: the worker says so and exits, its jobs failing
    with that reason (never-claimed ones queued again). So does one whose loop's thread died."""
    last = time.monotonic()
    while True:
        time.sleep(WATCH)
        now = time.monotonic()
        slept, last = now - last, now
        if slept > WATCH + coroutines.STALL:
            continue  # this thread did not run either (the process was stopped): let the loop beat first
        if not loop.thread.is_alive():
            how = "" if died_of.name is None else f" ({died_of.name} escaped it)"
            stop(f"the worker's event loop stopped{how}{STOPPED}", 73)
        late = time.monotonic() - loop.pulse
        if late <= coroutines.STALL:
            continue
        ctx = loop.holder()  # (the job whose task, or a task it started, holds the loop)
        store = None if ctx is None else ctx._store
        limit = (
            float(DEFAULT_CONFIG["LONGTASK_HEARTBEAT_TIMEOUT"]) + float(DEFAULT_CONFIG["LONGTASK_CANCEL_GRACE"])
            if store is None
            else store.heartbeat_timeout + store.cancel_grace
        )
        if late > limit:
            who = "a coroutine" if ctx is None else f"a coroutine job ({ctx.id})"
            what = f"{who} blocked the event loop for more than {limit:g} s"
            stop(what + STOPPED, 71)


class KeptThreads:
    """Threads for a loop worker's jobs (a thread each, which waits for its coroutine), each
    kept, once its job has ended, for the next one.

    Starting a thread waits until the new thread runs, and with a hundred jobs' threads sharing
    the GIL, a burst of 100 jobs spent a tenth of the worker's time starting threads: 200
    coroutine jobs of 0.2 s took 7% longer end to end than with kept threads (and each new
    thread opened its own SQLite connection, closed when it exited). A call goes to an idle
    kept thread if there is one, else to a new thread. A thread counts itself idle only once its
    call has returned (after the job's ``Done`` is sent), so the next job may start a thread of
    its own meanwhile: a few more threads than the calls that ran at once (the worker's slots).
    """

    def __init__(self) -> None:
        self._work: queue.SimpleQueue[tuple[t.Callable[..., None], tuple[t.Any, ...]]] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._idle = 0  # threads that are, or are about to be, waiting for a call

    @property
    def idle(self) -> int:
        """How many kept threads wait for a call."""
        return self._idle

    def run(self, func: t.Callable[..., None], *args: t.Any) -> None:
        """Call ``func(*args)`` in an idle kept thread, or a new one; return at once."""
        with self._lock:
            spare = self._idle > 0
            self._idle -= spare
        self._work.put((func, args))  # (taken by whichever thread gets to it first: each put has one)
        if not spare:
            threading.Thread(target=self._serve, name="longtask-job", daemon=True).start()

    def _serve(self) -> None:
        while True:
            func, args = self._work.get()
            try:
                func(*args)
            except BaseException:  # (the loop worker's run() ends the process on its own errors)
                _log.exception("A job's thread in a loop worker failed.")
            with self._lock:
                self._idle += 1


class _Died:
    """What ended a loop worker's loop thread, if something did (``SystemExit``...): for the
    watchdog's reason."""

    def __init__(self) -> None:
        self.name: str | None = None
