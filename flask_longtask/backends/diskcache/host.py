"""The pool's host: the process that holds the directory's lock runs the pool here.

One process per directory holds an ``flock`` on ``pool.lock`` and owns the pool. The kernel
drops the lock the instant the host dies, so a standby process takes over without any lease to
expire. Other processes reach the host through the FIFO (:mod:`.fifo`). The host's dispatcher
thread queues jobs (:class:`~.jobqueue.JobQueue`), sends them to idle worker processes
(:mod:`.workers`), and sends queued jobs *ahead* to busy ones (:data:`AHEAD`); it reads their
messages (:mod:`.wire`), watches their exit sentinels, replaces a worker that dies and passes its
job to :meth:`~flask_longtask.store.JobStore.mark_lost`, stops cancelled jobs by force at their
deadline, and sweeps expired records. Workers are forked from a ``forkserver`` (or started
with ``spawn``), never from the web process itself, so they cannot inherit a lock held by
another thread; each holds a *lifeline* pipe to the host: when the host dies, they exit.

Job records stay the source of truth: a new host scans them, fails the jobs that were running
on the dead host and queues the ones that never started; every ``cleanup_interval`` it scans
again for queued jobs it was never told of (:mod:`.recovery`).

``docs/internals.md`` follows a job through all of it, and says what each lock protects.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import os
import select
import threading
import time
import typing as t

import multiprocess  # the package checks it is installed, with a clear message, before it imports us

# Imported now, before the package registers its atexit hook: multiprocess registers its own
# (join every child) on import, and atexit runs hooks last-in first-out, so ours -- stop the
# dispatcher thread, then reap the workers -- runs first instead of racing with it.
import multiprocess.util

from . import elastic, fifo, loops, recovery, waiting, wire
from .jobqueue import Delayed, JobQueue
from .workers import Worker, close, spawn

if t.TYPE_CHECKING:  # pragma: no cover
    from . import DiskcacheBackend

_log = logging.getLogger(__name__)

LOCK_NAME = "pool.lock"
#: How often the host wakes with nothing to do: mailbox, kill deadlines, maintenance.
TICK = 0.25
#: Seconds between two logs of a dispatcher error that repeats.
LOG_EVERY = 60.0
#: Whether the dispatcher polls with an epoll (Linux), whose set another thread may change while
#: the dispatcher blocks in it. Elsewhere it uses poll(), and waiters do not read workers' pipes.
EPOLL = hasattr(select, "epoll")
#: How many queued jobs a busy worker is sent ahead of its end. It claims the first in the same
#: transaction that ends its job and runs it at once: no claim of its own, no wait for the next
#: id. A worker whose job runs long gives them back, so that a job waits behind a long one only
#: that long while another worker is free.
AHEAD = 2


class PoolHost:
    """The pool of one directory, run by the process holding the directory's lock.

    Its dispatcher thread runs :meth:`run`. Other threads of the process call :meth:`push_local`
    (a job submitted here), :mod:`.handoff` (the same, straight to an idle worker),
    :func:`.waiting.wait_done` (a wait for a job's end) and :meth:`announce_end`. Everything
    below the mutex is the dispatcher's, or of whoever holds the mutex.
    """

    def __init__(
        self,
        backend: DiskcacheBackend,
        lock_fd: int,
        size: int,
        *,
        on_step_down: t.Callable[[PoolHost], None] | None = None,
    ) -> None:
        self.backend = backend
        #: Called (in the dispatcher thread) once it has stopped after :meth:`step_down`.
        self._on_step_down = on_step_down
        #: How many workers are kept warm; the pool grows past them up to a ceiling (.elastic).
        self.size = size
        self.elastic = elastic.Elastic(size, elastic.ceiling(size, backend.max_workers), backend.worker_idle)
        #: The workers of coroutine jobs, apart from the others (see .loops).
        self.loops = loops.Loops(self, backend.async_concurrency, elastic.ceiling(size, backend.max_workers))
        self._lock_fd = lock_fd
        self._ctx = multiprocess.get_context(backend.start_method)
        if backend.start_method == "forkserver":
            # The fork server is one clean, single-threaded process per host process; importing
            # these there once makes each new worker a cheap fork, not a new interpreter.
            self._ctx.set_forkserver_preload(
                ["flask", "diskcache", "flask_longtask", "flask_longtask.backends.diskcache"]
            )
        with contextlib.ExitStack() as opened:  # (what was opened is closed if the rest fails)
            self._fifo = fifo.FifoReader(backend.directory)
            opened.callback(self._fifo.close)
            self._count = fifo.QueueCount(backend.directory)
            opened.callback(self._count.close)
            self._wake_r, self._wake_w = os.pipe()
            opened.pop_all()
        #: Held by the dispatcher while it handles what it woke for, by push_local, the hand-over
        #: and a waiter that reads a worker's pipe: it guards the workers and the queue.
        self.mutex = threading.RLock()
        self.workers: list[Worker] = []
        self.queue = JobQueue()
        #: Retries waiting out their backoff, queued when due.
        self.later = Delayed()
        #: Jobs pushed locally while the dispatcher held the mutex (push_local never waits).
        self.inbox: collections.deque[tuple[str, bool]] = collections.deque()  # (id, coroutine)
        self.stopping = threading.Event()
        #: The ends of jobs, for the waiters of this process.
        self.ends = waiting.Ends()
        #: Jobs put back in the queue once because their worker died before claiming them.
        self.requeued: set[str] = set()
        #: Forced stops to make: job id -> deadline (epoch).
        self.kills: dict[str, float] = {}
        #: Jobs whose worker died but whose end could not be written yet: job id -> how.
        self.unrecorded: dict[str, str] = {}
        self._wake_lock = threading.Lock()
        os.set_blocking(self._wake_w, False)  # a full pipe means it is awake already: never wait
        #: The dispatcher's poll set. An epoll, so that a waiting thread can take a worker's
        #: pipe out of it (and put it back) while the dispatcher is blocked in it (watch()).
        self._poller: t.Any = None
        #: The workers in the poll set, which is rebuilt when they change.
        self._polled: list[Worker] | None = None
        #: Held while the poll set is rebuilt or a worker's pipe is taken out or put back.
        self._poll_lock = threading.Lock()
        self._thread: threading.Thread | None = None
        #: Whether :meth:`run` was entered (it then shuts the pool down itself when it returns).
        self.ran = False
        #: Whether it stopped because its directory was removed or replaced (step_down()).
        self.stepped_down = False
        self._released = False  # whether shutdown() has closed what it holds (_release)
        self._started = False  # workers start with the first job, then the pool keeps its size
        self.respawn_delay = 0.0
        now = time.monotonic()
        self.next_spawn = self._next_mail = 0.0
        self._next_rescan = 0.0  # the first loop recovers what a previous host left behind
        self._next_cleanup = now + backend.cleanup_interval

    # -- lifecycle ------------------------------------------------------------------------------

    def start(self) -> None:
        self._thread = threading.Thread(target=self.run, name="longtask-pool", daemon=True)
        self._thread.start()

    def run(self) -> None:
        """The dispatcher loop; returns when :meth:`stop` is called, or once the directory was
        removed or replaced (:meth:`replaced`): the backend then hosts the new one."""
        self.ran = True
        errors, next_log = 0, 0.0  # an error that repeats is logged once a minute
        try:
            while not self.stopping.is_set():
                try:
                    self._step()
                except Exception:
                    now = time.monotonic()
                    if now >= next_log:
                        more = f" ({errors} more since the last one logged)" if errors else ""
                        _log.exception("Worker pool of %s: dispatcher error%s; retrying.", self.backend.directory, more)
                        errors, next_log = 0, now + LOG_EVERY
                    else:
                        errors += 1
                    self.stopping.wait(TICK)
        finally:
            try:
                self.shutdown()
            finally:
                if self.stepped_down and self._on_step_down is not None:
                    self._on_step_down(self)

    def replaced(self) -> bool:
        """Whether the directory's ``pool.lock`` is no longer the file this host locked: the
        directory was removed (to get rid of a corrupted database, as its error advises) or
        replaced. Its records, FIFO and lock are then not the ones other processes use."""
        try:
            mine = os.fstat(self._lock_fd)
            now = os.stat(os.path.join(self.backend.directory, LOCK_NAME))
        except (FileNotFoundError, NotADirectoryError):
            return True
        except OSError:  # (EACCES, ESTALE, EIO...: no sign that it was replaced)
            return False
        return (now.st_dev, now.st_ino) != (mine.st_dev, mine.st_ino)

    def step_down(self) -> None:
        """Stop hosting a directory that was removed or replaced (see :meth:`replaced`)."""
        if not self.stepped_down:
            self.stepped_down = True
            _log.warning(
                "Worker pool of %s: the directory was removed or replaced; this process stops hosting the old one.",
                self.backend.directory,
            )
        self.stopping.set()
        self.wake(wait=False)

    def stop(self, timeout: float = 10.0) -> None:
        self.stopping.set()
        self.wake(wait=False)
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout)

    def forget(self) -> None:
        """In a forked child: close the inherited descriptors, touch nothing else."""
        self._fifo.close()
        self._count.close(clear=False)
        for fd in (self._wake_r, self._wake_w, self._lock_fd):
            with contextlib.suppress(OSError):
                os.close(fd)
        close(self._poller)

    def shutdown(self) -> None:
        """Stop the workers and let go of the lock (by :meth:`run` as it returns, or by the
        backend for a host that never ran)."""
        try:
            with self.mutex:  # push_local leaves jobs in storage from here (through the inbox)
                for worker in self.workers:
                    close(worker.lifeline)  # workers see their lifeline close and exit at once
                deadline = time.monotonic() + 1.0
                workers, self.workers = self.workers, []
                for worker in workers:  # (through os._exit: whatever saves data at exit does)
                    if worker.stop(deadline):
                        self.drain(worker)
                    recovery.left_behind(self, worker)
                    worker.close()
                self.loops.shutdown(deadline)
                self.elastic.shutdown()
            self.ends.announce()
        finally:
            self._release()

    def _release(self) -> None:
        """Close what the host holds, the lock last (a standby process then takes over); once."""
        if self._released:
            return
        self._released = True
        self._count.close()
        with self._wake_lock:
            wake_w, self._wake_w = self._wake_w, -1
        self._fifo.close()
        for fd in (self._wake_r, wake_w):
            with contextlib.suppress(OSError):
                os.close(fd)
        with self._poll_lock:
            close(self._poller)
        os.close(self._lock_fd)  # releases the flock: a standby process takes over
        _log.info("Worker pool of %s stopped.", self.backend.directory)

    # -- what other threads call ----------------------------------------------------------------

    def push_local(self, job_id: str, *, coroutine: bool = False) -> None:
        """Queue a job submitted in this process and hand it to an idle worker from here.

        Saves the hop through the FIFO and a wake-up of the dispatcher thread, which would
        contend for this process's GIL with the thread that submits.
        """
        if not self.mutex.acquire(blocking=False):
            # The dispatcher is busy (a sweep, a recovery, a lost job's signals): leave the job
            # to it rather than make the request wait.
            self.inbox.append((job_id, coroutine))
            self.wake()
            return
        try:
            self._drain_inbox()  # (jobs left to the dispatcher were submitted first: they go first)
            self.queue.push(job_id, coroutine=coroutine)
            if coroutine:  # to a worker of coroutine jobs with a free slot; starting one is the dispatcher's
                wake = self.loops.dispatch(spawn=False)
                return
            self.dispatch_idle()
            # No idle worker: the next one to be done takes it (whoever reads its "done" gives
            # it the next job), so the dispatcher need not wake; unless none runs a job, the
            # pool is short of workers (none started yet, or one is being replaced), or it just
            # filled and may grow (the dispatcher takes its first readings: .elastic).
            wake = bool(self.queue) and (
                len(self.workers) < self.size
                or all(worker.job_id is None for worker in self.workers)
                or self.elastic.unread
            )
        finally:
            self.mutex.release()
            if wake:
                self.wake()

    def _drain_inbox(self) -> None:
        while self.inbox:
            job_id, coroutine = self.inbox.popleft()
            self.queue.push(job_id, coroutine=coroutine)

    def announce_end(self, job_id: str) -> None:
        """Wake the threads of this process that wait for ``job_id``: it was ended here, or in
        another process (which said so through the FIFO), not by one of the pool's workers."""
        self.ends.add(job_id)
        self.ends.announce()

    def tracks(self, job_id: str) -> bool:
        """Whether a wait for ``job_id`` in this process may skip its first read (see
        :meth:`.waiting.Ends.tracks`)."""
        return self.ends.tracks(job_id, known=job_id in self.queue)

    def queued(self) -> int:
        """How many jobs wait: in the queue, or sent ahead to a busy worker."""
        return len(self.queue) + self.queue.coroutines() + sum(len(worker.ahead) for worker in self.workers)

    def wake(self, *, wait: bool = True) -> None:
        # ``wait=False`` in stop(), which may run in a signal handler: if the lock is held,
        # someone is waking the dispatcher (or closing it) right now anyway.
        if not self._wake_lock.acquire(blocking=wait):
            return
        try:
            if self._wake_w >= 0:  # -1 once shut down: the descriptor is closed
                os.write(self._wake_w, b"x")
        except OSError:  # pragma: no cover - a full pipe: it is awake already
            pass
        finally:
            self._wake_lock.release()

    def watch(self, job_id: str, timeout: float) -> Worker | None:
        """The worker that runs ``job_id``, its pipe taken out of the dispatcher's poll set, for
        a waiter to read; ``None`` if none does, another thread watches it already, or the
        dispatcher held the mutex for ``timeout`` seconds.

        Under the mutex: the dispatcher reads a worker's message under it, and not once the
        worker is watched, so the message that ends the job is read by exactly one of them.
        """
        if not EPOLL or not self.mutex.acquire(timeout=timeout):
            return None
        try:
            with self._poll_lock:
                for worker in list(self.workers):
                    if worker.job_id != job_id or worker.watched or worker.eof:
                        continue  # (at end-of-file it died: the dispatcher reaps it, and wakes us)
                    try:
                        fd = worker.conn.fileno()
                    except OSError:  # closed: it was reaped meanwhile
                        return None
                    worker.watched = True
                    if self._polled is not None and worker in self._polled:
                        with contextlib.suppress(OSError, ValueError):  # closed: shut down
                            self._poller.modify(fd, 0)
                    return worker
            return None
        finally:
            self.mutex.release()

    def unwatch(self, worker: Worker) -> None:
        """Give a worker's pipe back to the dispatcher."""
        with self._poll_lock:
            worker.watched = False
            if self._polled is not None and worker in self._polled:
                with contextlib.suppress(OSError, ValueError):  # closed (reaped) meanwhile
                    self._poller.modify(worker.conn.fileno(), select.POLLIN)

    # -- the loop -------------------------------------------------------------------------------

    def _step(self) -> None:
        now = time.monotonic()
        timeout = max(0.0, min(TICK, self._next_mail - now))  # (a tick every TICK, however woken)
        if self.kills:
            timeout = max(0.0, min(timeout, min(self.kills.values()) - time.time()))
        if self.later:
            timeout = max(0.0, min(timeout, self.later.next_due(self.queue) - time.time()))
        if (self.queue or self._started) and len(self.workers) < self.size:
            timeout = max(0.0, min(timeout, self.next_spawn - now))
        ready = self._poll(timeout)
        woke = time.monotonic()
        ticked = woke >= self._next_mail
        if ticked:
            self._next_mail = woke + TICK
        try:
            self._handle_ready(ready, ticked)
            if self.later and self.later.next_due(self.queue) <= time.time():
                with self.mutex:
                    for job_id in self.later.take_due(time.time(), self.queue):
                        self.queue.push(job_id, coroutine=job_id in self.later.coroutines)
                        self.later.coroutines.discard(job_id)
                    self._dispatch()
                    self.publish()
            if now >= self._next_rescan:  # (it takes the mutex only for what it changes)
                first = self._next_rescan == 0.0
                self._next_rescan = now + self.backend.cleanup_interval
                recovery.rescan(self, first=first)
                with self.mutex:  # (what it queued)
                    self._dispatch()
                    self.publish()
        finally:
            self.ends.announce()
            soon = self.elastic.step(self, woke, ticked)  # (last, even after an error: see .elastic)
            if soon is not None:  # (its first readings: it judges them at an early tick)
                self._next_mail = min(self._next_mail, soon)

    def _handle_ready(self, ready: set[int], ticked: bool) -> None:
        with self.mutex:
            if self._fifo.fd in ready:
                self._handle_lines(self._fifo.read())
            if self._wake_r in ready:
                os.read(self._wake_r, 4096)
            self._drain_inbox()
            self.loops.read(ready)
            for worker in list(self.workers):
                if worker.frames.fd in ready and not worker.watched:  # (else its watcher reads it)
                    self.read_messages(worker)
                if worker.sentinel in ready:
                    recovery.reap(self, worker, None)
            now = time.monotonic()
            if ticked:
                self.loops.tick(now)
                self._handle_lines(self.backend.maintain())
                if self.unrecorded:
                    recovery.record_lost(self)
            if self.kills:
                recovery.run_kills(self)
            if now >= self._next_cleanup:
                self._next_cleanup = now + self.backend.cleanup_interval
                self.backend.cleanup()
            self._dispatch()
            self.publish()

    def _handle_lines(self, messages: list[wire.Line]) -> None:
        for message in messages:
            if isinstance(message, wire.Queued):
                self.queue.push(message.job_id, coroutine=message.coroutine)
            elif isinstance(message, wire.Later):
                self.later.add(message.job_id, message.due, coroutine=message.coroutine)
            elif isinstance(message, wire.Kill):
                self.kills[message.job_id] = message.deadline
            elif isinstance(message, wire.StartFailed):
                recovery.start_failed(self, message)
            else:
                self.ends.add(message.job_id)

    def publish(self) -> None:
        """Write the length of the queue where other processes read it, if it changed."""
        self._count.publish(self.queued())

    def _poll(self, timeout: float) -> set[int]:
        """The descriptors that are ready: the FIFO, the wake pipe, workers' sentinels and their
        pipes (but one a waiting thread reads itself: see :meth:`watch`)."""
        polled = self.workers + self.loops.workers
        if polled != self._polled:  # a worker came or went: one poll set until the next change
            with self._poll_lock:
                old, self._poller = self._poller, select.epoll() if EPOLL else select.poll()
                close(old)
                self._poller.register(self._fifo.fd, select.POLLIN)
                self._poller.register(self._wake_r, select.POLLIN)
                for worker in polled:
                    self._poller.register(worker.frames.fd, 0 if worker.watched else select.POLLIN)
                    self._poller.register(worker.sentinel, select.POLLIN)
                # (The workers themselves, not their descriptors' numbers: a new worker's may
                # reuse a dead one's, and an epoll forgets a descriptor when it is closed.)
                self._polled = polled
        return {fd for fd, _ in self._poller.poll(timeout if EPOLL else timeout * 1000)}

    # -- workers' messages ----------------------------------------------------------------------

    def read_messages(self, worker: Worker, *, check: bool = True, want: str | None = None) -> dict[str, t.Any] | None:
        """Handle a worker's messages, as many as were read whole; return what the end of job
        ``want`` wrote, if it was among them and its worker sent that.

        ``check``: whether to look first if there is one. The dispatcher polled the pipe, then
        waited for the mutex: a thread waiting for the job may have read the message meanwhile.
        """
        if check and not worker.readable():
            return None
        wanted = None
        while True:
            try:
                data = worker.frames.recv()
            except (EOFError, OSError):
                worker.eof = True
                return wanted  # it died; the sentinel says how
            try:
                message = wire.decode_from_worker(data)
            except ValueError:  # pragma: no cover - a worker sends what wire encodes
                _log.exception("Worker pool: a message of worker %s could not be read.", worker.pid)
                message = wire.Done(t.cast(str, worker.job_id))
            done = self._handle_message(worker, message, len(data))
            if done is not None and done.job_id == want:
                wanted = done.values
            if not worker.frames.has_message():  # (more, not yet read whole: the pipe is readable)
                return wanted

    def _handle_message(
        self, worker: Worker, message: wire.Done | wire.GiveBack | wire.Failing | wire.Draining, size: int
    ) -> wire.Done | None:
        """Handle one message of a worker; the :class:`~.wire.Done` it was, if it was one."""
        if isinstance(message, wire.Failing):  # it failed inside execute() and now exits
            worker.reason = message.reason
            return None
        if isinstance(message, wire.Draining):  # pragma: no cover - only a loop worker says it (.loops)
            return None
        if isinstance(message, wire.GiveBack):
            worker.gave_back = True
            for back_id in message.job_ids:  # queued again, each in its place
                if back_id in worker.ahead:
                    worker.ahead.remove(back_id)
                    self.queue.requeue(back_id)
            return None
        job_id = worker.job_id
        values = message.values if message.job_id == job_id else None  # (it answers for its own)
        worker.job_id, worker.preclaimed, worker.gave_back, worker.settled = None, False, False, True
        now = time.monotonic()
        if message.ahead is not None:  # it claimed the next job sent ahead as it ended this one
            next_id, runs = message.ahead
            with contextlib.suppress(ValueError):
                worker.ahead.remove(next_id)
            if runs:
                worker.job_id, worker.given = next_id, now
            else:  # ended meanwhile (cancelled while it waited, purged): nothing ran
                self.queue.forget(next_id)
                self.ends.add(next_id)
        if worker.job_id is None and worker.ahead:
            # It takes the next one sent ahead from its pipe, and claims it itself.
            worker.job_id, worker.given = worker.ahead.popleft(), now
        self.respawn_delay = 0.0
        if job_id is not None:
            self.queue.forget(job_id)
            self.kills.pop(job_id, None)
            self.requeued.discard(job_id)
            # Last: a waiter woken here may submit its next job at once, to this idle worker.
            if not message.again:  # (a retry is no end: its waiters wait on, without spinning)
                self.ends.add(job_id, values, size)
        return None if job_id is None else wire.Done(job_id, values, message.ahead, message.again)

    def drain(self, worker: Worker) -> None:
        """Handle what a dead worker sent before it died (its pipe keeps it): its last "done"
        says which job sent ahead it went on to."""
        while not worker.eof and worker.readable():
            self.read_messages(worker, check=False)

    # -- dispatch -------------------------------------------------------------------------------

    def _dispatch(self) -> None:
        if self.queue:
            self._started = True
        if self._started:
            # (While it backs off after workers that died as they started, a job that comes when
            # none is left starts one at once: it runs, or fails as they did, without waiting.)
            while len(self.workers) < self.size and (
                time.monotonic() >= self.next_spawn or not self.workers and self.queue
            ):
                self.add_worker()
        self.dispatch_idle()
        self.loops.dispatch()

    def add_worker(self) -> None:
        """Start one more worker (the pool's minimum, a replacement, or growth: .elastic)."""
        self.workers.append(spawn(self._ctx, self.backend.directory, self.backend.storage_secret()))

    def dispatch_idle(self) -> None:
        """The next queued jobs to idle workers; then, while jobs remain, ahead to busy ones."""
        for worker in self.workers:
            if not self.queue:
                return
            if worker.job_id is None and not (worker.ahead or worker.held):
                job_id = self._send_next(worker)
                if job_id is not None:
                    worker.job_id, worker.given = job_id, time.monotonic()
        for depth in range(1, AHEAD + 1):  # one each first, then a second each
            for worker in self.workers:
                if not self.queue:
                    return
                if (
                    worker.job_id is not None
                    and len(worker.ahead) < depth
                    # (Nor to one whose job was judged waiting: it runs a while; nor one held back:
                    # its jobs burn CPU, and the CPUs are full; see .elastic.)
                    and not (worker.handing or worker.gave_back or worker.waiting or worker.held)
                    and worker.reason is None
                    and worker.job_id not in self.kills  # (to be stopped by force: it would be too)
                ):
                    job_id = self._send_next(worker)
                    if job_id is not None:
                        worker.ahead.append(job_id)

    def _send_next(self, worker: Worker) -> str | None:
        """Send the first queued job to a worker; its id, or ``None`` if the worker is dying
        (the job stays first in the queue, and the worker's sentinel will fire)."""
        job_id = self.queue.pop()
        if not worker.send(wire.Run(job_id)):
            self.queue.unpop(job_id)
            return None
        return job_id
