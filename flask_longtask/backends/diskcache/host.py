"""The worker pool behind :class:`~flask_longtask.backends.diskcache.DiskcacheBackend`.

One process per directory, the *host*, holds an ``flock`` on ``pool.lock`` and owns the pool.
The kernel drops the lock the instant the host dies, so a standby process takes over without
any lease to expire. Other processes talk to the host through the named pipe ``pool.fifo``:
one line per message, each written atomically (a write of at most ``PIPE_BUF`` bytes never
interleaves with another; when the pipe is full, messages wait in storage, in a mailbox):

==========================  ============================================================
``q <job id>``              a job was queued
``k <job id> <deadline>``   end this job by force if it still runs at ``deadline`` (epoch)
``e <job id>``              another process ended this job (a cancel while it was queued):
                            wake the threads of the host's process that wait for it
==========================  ============================================================

The host dispatches job ids to idle worker processes over pipes and watches their exit
sentinels: a worker that dies is reaped and replaced, and its job is passed to
:meth:`~flask_longtask.store.JobStore.mark_lost`. Workers are forked from a ``forkserver``
(or started with ``spawn``), never forked from the web process itself, so they cannot inherit a
lock held by another thread of a threaded web server; each holds a *lifeline* pipe to the host:
when the host dies, the pipe closes and they exit.

Job records stay the source of truth: a new host scans them, fails the jobs that were running
on the dead host and queues the ones that never started.
"""

from __future__ import annotations

import collections
import contextlib
import errno
import logging
import os
import pickle
import select
import signal
import string
import threading
import time
import typing as t

import multiprocess  # diskcache.py checks it is installed, with a clear message, before it imports us

# Imported now, before diskcache.py registers its atexit hook: multiprocess registers its own
# (join every child) on import, and atexit runs hooks last-in first-out, so ours -- stop the
# dispatcher thread, then reap the workers -- runs first instead of racing with it.
import multiprocess.util

from ...job import JobStatus
from ..base import MISSING
from .child import CPUS, worker_main

if t.TYPE_CHECKING:  # pragma: no cover
    from . import DiskcacheBackend

_log = logging.getLogger(__name__)

FIFO_NAME = "pool.fifo"
LOCK_NAME = "pool.lock"
#: The host keeps the length of its queue here, for ``queue_length()`` in other processes.
QUEUED_NAME = "pool.queued"
#: Messages that could not be written to the FIFO (full) wait here, in storage.
MAILBOX = "_lt-mail"
#: How often the host wakes with nothing to do: mailbox, kill deadlines, maintenance.
TICK = 0.25
#: Seconds a submit in the host's process waits for the dispatcher's mutex to hand its job to
#: an idle worker directly (the dispatcher holds it for a step: a few hundred microseconds,
#: longer for a sweep); past that, the job goes through the queue.
_RESERVE_WAIT = 0.05
#: For how long after a worker is given a job a thread of the host's process that waits for
#: that job looks for its end before it sleeps: a job that ends within it costs no wake-up of
#: the waiter (on a VM, some 30 us, and caches gone cold). Only while a CPU is free (fewer jobs
#: run than the host may use), and one such thread at a time, yielding meanwhile.
WAIT_SPIN = 0.001
#: Whether the dispatcher polls with an epoll (Linux), whose set another thread may change while
#: the dispatcher blocks in it. Elsewhere it uses poll(), and waiters do not read workers' pipes.
_EPOLL = hasattr(select, "epoll")
#: What the ends of recent jobs wrote, as their workers sent it, is kept for waiters in the
#: host's process up to this many bytes (of the workers' messages) and this many jobs.
_END_VALUES_BYTES = 2**20
_END_VALUES_JOBS = 1024
#: For this many seconds after a job's end, a wait that starts then is answered from what the
#: end wrote, without a read (PoolHost.tracks()): a purge in another process meanwhile is not
#: seen (the job's own expiry is).
END_VALUES_FRESH = 2.0
#: Seconds between rewrites of the queue's length while it changes (see _publish()).
_PUBLISH_EVERY = 0.01
#: How many queued jobs a busy worker is sent ahead of its end. It claims the first in the same
#: transaction that ends its job and runs it at once: no claim of its own, no wait for the next
#: id. A worker whose job runs long gives them back (_poolworker.HAND_BACK_AFTER), so that a
#: job waits behind a long one only that long while another worker is free.
AHEAD = 2


class _Slot:
    """One worker process and the job it runs."""

    __slots__ = (
        "ahead",
        "conn",
        "eof",
        "fd",
        "gave_back",
        "given",
        "handing",
        "job_id",
        "lifeline",
        "pending",
        "preclaimed",
        "process",
        "reason",
        "sentinel",
        "started",
        "watched",
    )

    def __init__(self, process: t.Any, conn: t.Any, lifeline: t.Any) -> None:
        self.process = process
        self.conn = conn
        self.lifeline = lifeline
        #: The descriptors of its pipe and of its exit sentinel, while it is in the pool.
        self.fd: int = conn.fileno()
        self.sentinel: int = process.sentinel
        self.job_id: str | None = None
        #: The jobs sent to it ahead, while it runs one (in its pipe, in this order): see AHEAD.
        self.ahead: collections.deque[str] = collections.deque()
        #: Whether it gave back the jobs sent ahead (its job runs long): none until it ends.
        self.gave_back = False
        #: Whether it was reserved for a job of this process that has not had its "go" yet:
        #: nothing may be sent ahead of that word.
        self.handing = False
        #: When it was given its job (monotonic).
        self.given = 0.0
        #: Whether its job was claimed for it when it was handed over (not by the worker).
        self.preclaimed = False
        self.started = time.monotonic()
        #: Why the worker is about to exit, when it says so first (it could not store an outcome).
        self.reason: str | None = None
        #: Whether a thread waiting for its job reads its pipe (the dispatcher then does not).
        self.watched = False
        #: Bytes read from its pipe beyond the last whole message (see recv()).
        self.pending = b""
        #: Whether its pipe reached end-of-file (it died; the dispatcher reaps it).
        self.eof = False

    def has_message(self) -> bool:
        """Whether a whole message was read already (recv() returns it without a system call)."""
        buf = self.pending
        return len(buf) >= 4 and len(buf) >= 4 + int.from_bytes(buf[:4], "big", signed=True)

    def recv(self) -> bytes:
        """The worker's next message, as ``Connection.send_bytes`` framed it (a 4-byte length,
        then the bytes): read in one system call when it is all there, where ``recv_bytes``
        makes two. Blocks for the rest of a message that is not.

        :raises EOFError: the worker closed its end (it died).
        """
        buf = self.pending
        while True:
            if len(buf) >= 4:
                end = 4 + int.from_bytes(buf[:4], "big", signed=True)
                if len(buf) >= end >= 4:
                    self.pending = buf[end:]
                    return buf[4:end]
                if end < 4:  # pragma: no cover - a worker's messages are far below 2 GiB
                    raise OSError("a pool worker sent a malformed message")
            chunk = os.read(self.conn.fileno(), 65536)
            if not chunk:
                raise EOFError
            buf += chunk


def exit_reason(exitcode: int | None) -> str:
    """How a worker process ended, for the job's error message."""
    if exitcode is None:
        return "its process vanished"
    if exitcode < 0:
        try:
            name = signal.Signals(-exitcode).name
        except ValueError:
            name = f"signal {-exitcode}"
        return f"its process was killed by {name}"
    return f"its process exited with code {exitcode}"


class PoolHost:
    """The pool of one directory, run by the process holding the directory's lock."""

    def __init__(self, backend: DiskcacheBackend, lock_fd: int, workers: int) -> None:
        self.backend = backend
        self.workers = workers
        self._lock_fd = lock_fd
        self._ctx = multiprocess.get_context(backend.start_method)
        if backend.start_method == "forkserver":
            # The fork server is one clean, single-threaded process per host process; importing
            # these there once makes each new worker a cheap fork, not a new interpreter.
            self._ctx.set_forkserver_preload(
                ["flask", "diskcache", "flask_longtask", "flask_longtask.backends.diskcache"]
            )
        self._fifo_path = os.path.join(backend.directory, FIFO_NAME)
        self._fifo_r, self._fifo_keep = _open_fifo_reader(self._fifo_path)
        self._buffer = b""
        self._queued_fd = os.open(os.path.join(backend.directory, QUEUED_NAME), os.O_RDWR | os.O_CREAT, 0o600)
        self._published = -1
        self._next_publish = 0.0
        self._slots: list[_Slot] = []
        self._queue: collections.deque[str] = collections.deque()
        #: The jobs queued or running here, each with its place in the order they were queued
        #: (a job put back in the queue goes back to its place: see _requeue).
        self._known: dict[str, int] = {}
        self._pushed = 0
        #: Jobs put back in the queue once because their worker died before claiming them.
        self._requeued: set[str] = set()
        self._kills: dict[str, float] = {}
        self._stopping = threading.Event()
        #: Held by the dispatcher while it handles what it woke for, and by push_local.
        self._mutex = threading.RLock()
        #: Jobs pushed locally while the dispatcher held the mutex (push_local never waits).
        self._inbox: collections.deque[str] = collections.deque()
        self._wake_lock = threading.Lock()
        #: The dispatcher's poll set. An epoll, so that a waiting thread can take a worker's
        #: pipe out of it (and put it back) while the dispatcher is blocked in it (_watch()).
        self._poller: t.Any = _new_poller()
        #: The workers in the poll set, which is rebuilt when they change.
        self._polled: list[_Slot] = []
        #: Held while the poll set is rebuilt or a worker's pipe is taken out or put back.
        self._poll_lock = threading.Lock()
        #: Held by the thread that looks for a job's end without sleeping (see _spin).
        self._spinning = threading.Lock()
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_w, False)  # a full pipe means it is awake already: never wait
        self._poller.register(self._fifo_r, select.POLLIN)
        self._poller.register(self._wake_r, select.POLLIN)
        self._thread: threading.Thread | None = None
        #: Whether :meth:`run` was entered (it then shuts the pool down itself when it returns).
        self.ran = False
        self._rescan = True  # the first loop recovers what a previous host left behind
        self._started = False  # workers start with the first job, then the pool keeps its size
        self._respawn_delay = 0.0
        self._next_spawn = 0.0
        self._next_mail = 0.0
        self._next_cleanup = time.monotonic() + backend.cleanup_interval
        #: Jobs that ended here recently (the newest last), for waiters in this process.
        self._ended: collections.OrderedDict[str, float] = collections.OrderedDict()
        #: What the ends of the most recent of them wrote, as their workers sent it, and the
        #: size of each worker's message.
        self._end_values: collections.OrderedDict[str, tuple[dict[str, t.Any], int]] = collections.OrderedDict()
        self._end_bytes = 0
        self._ended_cond = threading.Condition()
        #: Ended here, not yet announced to waiters: (job id, what its end wrote or None, size).
        self._ends: list[tuple[str, dict[str, t.Any] | None, int]] = []
        self._ends_lock = threading.Lock()
        #: Every worker pid this host started (tests use it to prove none outlives the pool).
        self.pids: list[int] = []

    # -- lifecycle ------------------------------------------------------------------------------

    def start(self) -> None:
        self._thread = threading.Thread(target=self.run, name="longtask-pool", daemon=True)
        self._thread.start()

    def run(self) -> None:
        """The dispatcher loop; returns when :meth:`stop` is called."""
        self.ran = True
        try:
            while not self._stopping.is_set():
                try:
                    self._step()
                except Exception:
                    _log.exception("Worker pool of %s: dispatcher error; retrying.", self.backend.directory)
                    self._stopping.wait(TICK)
        finally:
            self._shutdown()

    def stop(self, timeout: float = 10.0) -> None:
        self._stopping.set()
        self._wake(wait=False)
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout)

    def forget(self) -> None:
        """In a forked child: close the inherited descriptors, touch nothing else."""
        for fd in (self._fifo_r, self._fifo_keep, self._wake_r, self._wake_w, self._queued_fd, self._lock_fd):
            try:
                os.close(fd)
            except OSError:
                pass
        _close(self._poller)

    def _shutdown(self) -> None:
        with self._mutex:  # push_local leaves jobs in storage from here (through the inbox)
            for slot in self._slots:
                _close(slot.lifeline)  # workers see their lifeline close and exit at once
            deadline = time.monotonic() + 1.0
            for slot in self._slots:  # (through os._exit: whatever saves data at exit does)
                slot.process.join(max(0.0, deadline - time.monotonic()))
                if slot.process.is_alive():
                    slot.process.kill()
            for slot in self._slots:
                slot.process.join(5)
                if slot.process.exitcode is not None:
                    self._drain(slot)
                if slot.job_id is not None and self._claimed(slot.job_id):
                    self.backend._lost(slot.job_id, "the worker pool was shut down while it ran")
                    self._job_ended(slot.job_id)
                for job_id in slot.ahead:  # never started: queued in storage, for the next host
                    self._unclaim(job_id, slot.process.pid)
                # (one never claimed stays queued in storage: the next host runs it)
                _close(slot.conn)
                slot.process.close()
            self._slots.clear()
        self._announce_ends()
        os.ftruncate(self._queued_fd, 0)  # no host, no count
        with self._wake_lock:
            wake_w, self._wake_w = self._wake_w, -1
        for fd in (self._fifo_r, self._fifo_keep, self._wake_r, wake_w, self._queued_fd):
            try:
                os.close(fd)
            except OSError:
                pass
        with self._poll_lock:
            _close(self._poller)
        os.close(self._lock_fd)  # releases the flock: a standby process takes over
        _log.info("Worker pool of %s stopped.", self.backend.directory)

    def wait_done(self, job_id: str, timeout: float) -> dict[str, t.Any] | None:
        """Block until a worker of this pool is done with ``job_id``, or ``timeout`` seconds;
        return what the job's end wrote, if its worker sent it.

        When a worker runs the job now, the caller reads that worker's "done" itself, in place
        of the dispatcher thread, which would otherwise wake, handle it, and wake the caller:
        one wake-up instead of two, and no dispatcher work between the end and the caller.
        """
        deadline = time.monotonic() + timeout
        kept = self._end_values.get(job_id)
        if kept is not None:  # it has ended (see tracks())
            return _copy(kept[0])
        slot = self._watch(job_id, timeout)
        if slot is not None:
            try:
                values = self._take_done(slot, job_id, deadline)
            finally:
                self._unwatch(slot)
            if values is not None:
                return _copy(values)
        timeout = max(0.0, deadline - time.monotonic())
        with self._ended_cond:
            ended = self._ended.get(job_id)
            if ended is not None and job_id not in self._end_values and time.monotonic() - ended > 1.0:
                # Reported done a while ago, yet the waiter still sees it active (it was lost,
                # and ending it failed): no wake-up is coming, so this is a plain wait.
                self._ended_cond.wait(timeout)
                return None
            self._ended_cond.wait_for(lambda: job_id in self._ended, timeout)
            kept = self._end_values.get(job_id)
        return None if kept is None else _copy(kept[0])

    def _watch(self, job_id: str, timeout: float) -> _Slot | None:
        """The worker that runs ``job_id``, its pipe taken out of the dispatcher's poll set;
        ``None`` if none does, another thread watches it already, or the dispatcher held its
        mutex for ``timeout`` seconds.

        Under the mutex: the dispatcher reads a worker's message under it, and not once the
        worker is watched, so the message that ends the job is read by exactly one of them.
        """
        if not _EPOLL or not self._mutex.acquire(timeout=timeout):
            return None
        try:
            return self._watch_locked(job_id)
        finally:
            self._mutex.release()

    def _watch_locked(self, job_id: str) -> _Slot | None:
        with self._poll_lock:
            for slot in list(self._slots):
                if slot.job_id != job_id or slot.watched:
                    continue
                try:
                    fd = slot.conn.fileno()
                except OSError:  # closed: it was reaped meanwhile
                    return None
                slot.watched = True
                if slot in self._polled:
                    with contextlib.suppress(OSError, ValueError):  # closed: shut down
                        self._poller.modify(fd, 0)
                return slot
        return None

    def _unwatch(self, slot: _Slot) -> None:
        """Give a worker's pipe back to the dispatcher."""
        with self._poll_lock:
            slot.watched = False
            if slot in self._polled:
                with contextlib.suppress(OSError, ValueError):  # closed (reaped) meanwhile
                    self._poller.modify(slot.conn.fileno(), select.POLLIN)

    def _take_done(self, slot: _Slot, job_id: str, deadline: float) -> dict[str, t.Any] | None:
        """Wait until ``deadline`` (monotonic) for the watched worker that runs ``job_id`` to be
        done with it, and handle its "done" here as the dispatcher would; return what the job's
        end wrote, if the worker sent it."""
        poller = select.poll()
        try:
            poller.register(slot.conn.fileno(), select.POLLIN)
        except (OSError, ValueError):
            return None
        spun = self._spin(poller, min(slot.given + WAIT_SPIN, deadline))
        while True:
            if not spun:
                while not poller.poll(max(0.0, min(deadline - time.monotonic(), TICK)) * 1000):
                    # (The dispatcher may read the "done" itself, before it stops a worker by force.)
                    if time.monotonic() >= deadline or slot.job_id != job_id:
                        return None
            spun = False
            if not self._mutex.acquire(timeout=max(0.0, deadline - time.monotonic())):
                return None  # the dispatcher reads it once the pipe is back in its set
            try:
                # Unless the worker died (the dispatcher reaps it: it watches the exit sentinel).
                if slot.job_id != job_id or slot not in self._slots:
                    return None
                values = self._read_messages(slot, check=False, want=job_id)
                self._dispatch_idle()  # its worker is idle now (or gave jobs back): the next ones
                self._publish()
                ended = slot.job_id != job_id
            finally:
                self._mutex.release()
            self._announce_ends()
            if ended or slot.eof:  # (dead: the dispatcher reaps it, and wakes waiters then)
                return values
            # It gave back the jobs sent ahead ("R"): its job runs on; watch for its end again.

    def _spin(self, poller: select.poll, until: float) -> bool:
        """Look for the end of a job that started moments ago, until ``until`` (monotonic), if a
        CPU is free and no other thread of this process does the same; whether it came."""
        if time.monotonic() >= until or CPUS < 2 or not self._spinning.acquire(blocking=False):
            return False
        try:
            if sum(slot.job_id is not None for slot in self._slots) >= CPUS:
                return False  # every CPU may be running a job
            while not poller.poll(0):
                if time.monotonic() >= until:
                    return False
                os.sched_yield()  # anything runnable on this CPU goes first
            return True
        finally:
            self._spinning.release()

    def tracks(self, job_id: str) -> bool:
        """Whether a wait for ``job_id`` in this process may skip its first read: the job is
        queued or running in this pool and not yet announced ended (its end will wake the
        waiter), or it ended under :data:`END_VALUES_FRESH` seconds ago and what its end wrote
        is kept here, unexpired."""
        with self._ended_cond:
            kept = self._end_values.get(job_id)
            ended = self._ended.get(job_id)
        if job_id in self._known:
            # Unless it has ended already while still in the queue (cancelled there, or ended
            # by another process): no worker's "done" will answer for it, so read first.
            return ended is None
        if kept is None or ended is None or time.monotonic() - ended >= END_VALUES_FRESH:
            return False
        record = kept[0].get(f"job:{job_id}")
        try:  # (as stored: "finished" and "expire", its result's lifetime, in seconds)
            return bool(time.time() < record["finished"] + record["expire"])  # type: ignore[index]
        except (TypeError, KeyError):
            return False

    def _job_ended(self, job_id: str, values: dict[str, t.Any] | None = None, size: int = 0) -> None:
        # Announced once the dispatcher lets go of the mutex (_announce_ends): a waiter woken
        # by its job's end often submits the next one at once, and that submit needs the mutex
        # to hand it to the idle worker (reserve()).
        with self._ends_lock:
            self._ends.append((job_id, values, size))

    def announce_end(self, job_id: str) -> None:
        """Wake the threads of this process that wait for ``job_id``: it was ended here, or in
        another process (which said so through the FIFO), not by one of the pool's workers."""
        self._job_ended(job_id)
        self._announce_ends()

    def _announce_ends(self) -> None:
        if not self._ends:
            return
        with self._ends_lock:  # the dispatcher, a waiter (wait_done) or announce_end may add more
            ends, self._ends = self._ends, []
        with self._ended_cond:
            now = time.monotonic()
            for job_id, values, size in ends:
                self._ended[job_id] = now
                if values is not None:
                    old = self._end_values.pop(job_id, None)
                    self._end_bytes += size - (0 if old is None else old[1])
                    self._end_values[job_id] = (values, size)
            while len(self._ended) > 1024:  # a waiter looks within moments of its job's end
                self._ended.popitem(last=False)
            while self._end_values and (
                len(self._end_values) > _END_VALUES_JOBS or self._end_bytes > _END_VALUES_BYTES
            ):
                self._end_bytes -= self._end_values.popitem(last=False)[1][1]
            self._ended_cond.notify_all()

    # -- the loop -------------------------------------------------------------------------------

    def _step(self) -> None:
        now = time.monotonic()
        timeout = TICK
        if self._kills:
            timeout = max(0.0, min(timeout, min(self._kills.values()) - time.time()))
        if (self._queue or self._started) and len(self._slots) < self.workers:
            timeout = max(0.0, min(timeout, self._next_spawn - now))
        ready = self._poll(timeout)
        try:
            self._handle_ready(ready)
        finally:
            self._announce_ends()

    def _handle_ready(self, ready: set[int]) -> None:
        with self._mutex:
            if self._fifo_r in ready:
                self._read_fifo()
            if self._wake_r in ready:
                os.read(self._wake_r, 4096)
            while self._inbox:
                self._push(self._inbox.popleft())
            for slot in list(self._slots):
                if slot.fd in ready and not slot.watched:  # (else its watcher reads it)
                    self._read_messages(slot)
                if slot.sentinel in ready:
                    self._reap(slot, None)
            now = time.monotonic()
            if now >= self._next_mail:
                self._next_mail = now + TICK
                self._read_mailbox()
                self.backend.table.empty_trash()
                self.backend.table.checkpoint()
            if self._rescan:
                self._rescan = False
                self._recover()
            if self._kills:
                self._run_kills()
            if now >= self._next_cleanup:
                self._next_cleanup = now + self.backend.cleanup_interval
                self.backend.cleanup()
            self._dispatch()
            self._publish()

    def _publish(self) -> None:
        """Write the length of the queue where other processes read it, if it changed: at once
        when it empties or stops being empty, else at most every _PUBLISH_EVERY seconds (a
        busy queue changes with every job; the dispatcher publishes what is left each TICK)."""
        queued = self.queued()
        if queued == self._published:
            return
        now = time.monotonic()
        if queued and self._published > 0 and now < self._next_publish:
            return
        self._published, self._next_publish = queued, now + _PUBLISH_EVERY
        os.pwrite(self._queued_fd, f"{queued:<20}\n".encode(), 0)

    def queued(self) -> int:
        """How many jobs wait: in the queue, or sent ahead to a busy worker."""
        return len(self._queue) + sum(len(slot.ahead) for slot in self._slots)

    def _poll(self, timeout: float) -> set[int]:
        """The descriptors that are ready: the FIFO, the wake pipe, workers' sentinels and their
        pipes (but one a waiting thread reads itself: see :meth:`wait_done`)."""
        if self._slots != self._polled:  # a worker came or went: one poll set until the next change
            with self._poll_lock:
                old, self._poller = self._poller, _new_poller()
                _close(old)
                self._poller.register(self._fifo_r, select.POLLIN)
                self._poller.register(self._wake_r, select.POLLIN)
                for slot in self._slots:
                    self._poller.register(slot.conn.fileno(), 0 if slot.watched else select.POLLIN)
                    self._poller.register(slot.process.sentinel, select.POLLIN)
                # (The slots themselves, not their descriptors' numbers: a new worker's may reuse
                # a dead one's, and an epoll forgets a descriptor when it is closed.)
                self._polled = list(self._slots)
        return {fd for fd, _ in self._poller.poll(timeout if _EPOLL else timeout * 1000)}

    def push_local(self, job_id: str) -> None:
        """Queue a job submitted in this process and hand it to an idle worker from here.

        Saves the hop through the FIFO and a wake-up of the dispatcher thread, which would
        contend for this process's GIL with the thread that submits.
        """
        if not self._mutex.acquire(blocking=False):
            # The dispatcher is busy (a sweep, a recovery, a lost job's signals): leave the job
            # to it rather than make the request wait.
            self._inbox.append(job_id)
            self._wake()
            return
        try:
            self._push(job_id)
            self._dispatch_idle()
            # No idle worker: the next one to be done takes it (whoever reads its "done" gives
            # it the next job), so the dispatcher need not wake; unless none runs a job, or
            # the pool is short of workers (none started yet, or one is being replaced).
            wake = bool(self._queue) and (
                len(self._slots) < self.workers or all(slot.job_id is None for slot in self._slots)
            )
        finally:
            self._mutex.release()
        if wake:
            self._wake()

    def reserve(self, job_id: str) -> _Slot | None:
        """Take an idle worker for a job submitted in this process, before its records are
        written: they then include the claim for that worker (see ``store_and_enqueue``), and
        the worker runs the job without a claim or a read of its own. ``None`` when no worker
        is idle, jobs are waiting (they go first), or the dispatcher is busy."""
        if self._queue or all(slot.job_id is not None for slot in self._slots):
            return None  # at a glance, without waiting for the mutex (looked at again under it)
        if not self._mutex.acquire(timeout=_RESERVE_WAIT):  # busy for longer: take the queue
            return None
        try:
            if self._queue or self._inbox or self._stopping.is_set():
                return None
            for slot in self._slots:
                if slot.job_id is None and not (slot.ahead or slot.handing) and slot.reason is None:
                    slot.job_id, slot.given, slot.handing = job_id, time.monotonic(), True
                    self._known[job_id] = 0  # (never queued)
                    return slot
            return None
        finally:
            self._mutex.release()

    def go(self, slot: _Slot, start: bool) -> bool:
        """Tell a worker that was handed a job whether to start it (its records are stored) or
        drop it (they could not be); ``False`` if that worker is gone."""
        slot.given = time.monotonic()  # it starts now (for _spin)
        try:
            slot.conn.send_bytes(b"G" if start else b"N")
        except (OSError, ValueError):
            return False
        finally:
            # Jobs may be sent ahead from now on; after an "N", only once unreserve() has
            # made it idle (ahead of a job it drops, one would run with the pool unaware).
            slot.handing = not start
        return slot in self._slots

    def unreserve(self, slot: _Slot, job_id: str) -> None:
        """Give back a worker :meth:`reserve` took, for a job whose records could not be written."""
        with self._mutex:
            if slot.job_id == job_id:
                slot.job_id = None
                slot.preclaimed = slot.handing = False
            self._forget(job_id)
        self._wake()  # jobs may have queued meanwhile

    def hand_over(self, slot: _Slot, job_id: str, message: bytes) -> bool:
        """Send a reserved worker its (claimed) job; ``False`` if that worker is gone already.

        The worker prepares the job, then waits for :meth:`go`."""
        # No lock (the dispatcher may be busy for a while): flag first, then look. _reap removes
        # a dead worker's slot first and reads the flag after, so either it sees the flag and
        # fails the job, or we see the slot gone and the caller does.
        slot.preclaimed = True
        if slot not in self._slots or slot.job_id != job_id:
            return False
        try:
            slot.conn.send_bytes(message)
        except (OSError, ValueError):
            pass  # it is dying (or the pool shut down): the sentinel fires, and _reap fails the job
        return True

    def _wake(self, *, wait: bool = True) -> None:
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

    def _handle(self, line: bytes) -> None:
        parts = line.decode("ascii", "replace").split()
        if not parts:
            return
        if parts[0] == "q" and len(parts) == 2 and all(c in string.hexdigits for c in parts[1]):
            self._push(parts[1])
        elif parts[0] == "k" and len(parts) == 3:
            self._kills[parts[1]] = float(parts[2])
        elif parts[0] == "e" and len(parts) == 2 and all(c in string.hexdigits for c in parts[1]):
            self._job_ended(parts[1])
        else:
            _log.warning("Worker pool: ignored a malformed message %r.", line)

    def _push(self, job_id: str) -> None:
        if job_id not in self._known:
            self._pushed += 1
            self._known[job_id] = self._pushed
            self._queue.append(job_id)

    def _requeue(self, job_id: str) -> None:
        """Put back in the queue a job that was taken from it and never started, in its place:
        before the jobs queued after it, whatever became of the ones in between."""
        place = self._known.setdefault(job_id, 0)
        queue = self._queue
        at = next((i for i, queued in enumerate(queue) if self._known.get(queued, 0) > place), len(queue))
        queue.insert(at, job_id)

    def _forget(self, job_id: str) -> None:
        self._known.pop(job_id, None)

    def _read_fifo(self) -> None:
        while True:
            try:
                chunk = os.read(self._fifo_r, 65536)
            except BlockingIOError:
                break
            if not chunk:
                break
            self._buffer += chunk
        *lines, self._buffer = self._buffer.split(b"\n")
        for line in lines:
            self._handle(line)

    def _read_mailbox(self) -> None:
        cache = self.backend.cache
        while True:
            _, line = cache.pull(prefix=MAILBOX)
            if line is None:
                return
            self._handle(line)

    def _read_messages(self, slot: _Slot, *, check: bool = True, want: str | None = None) -> dict[str, t.Any] | None:
        """Handle a worker's messages, as many as were read whole; return what the end of job
        ``want`` wrote, if it was among them and its worker sent that.

        ``check``: whether to look first if there is one. The dispatcher polled the pipe, then
        waited for the mutex: a thread waiting for the job may have read the message meanwhile.
        """
        if check and not slot.pending and not _readable(slot.conn):
            return None
        wanted = None
        while True:
            try:
                data = slot.recv()
            except (EOFError, OSError):
                slot.eof = True
                return wanted  # it died; the sentinel says how
            job_id, values = self._handle_message(slot, data)
            if job_id is not None and job_id == want:
                wanted = values
            if not slot.has_message():  # (more, not yet read whole: the pipe is readable)
                return wanted

    def _handle_message(self, slot: _Slot, data: bytes) -> tuple[str | None, dict[str, t.Any] | None]:
        """Handle one message of a worker; return the job it is done with, if any, and what that
        job's end wrote, if it sent that."""
        if data.startswith(b"!"):  # "!<reason>": it failed inside execute() and now exits
            slot.reason = data[1:].decode("utf-8", "replace")
            return None, None
        if data.startswith(b"R"):  # "R" and the ids of the jobs sent ahead that it gives back
            slot.gave_back = True
            for raw in data[1:].split():  # queued again, each in its place
                back_id = raw.decode()
                if back_id in slot.ahead:
                    slot.ahead.remove(back_id)
                    self._requeue(back_id)
            return None, None
        values = ahead = None
        try:  # "E" and (job id, what its end wrote, the job sent ahead it claimed)
            done, values, ahead = pickle.loads(data[1:])
        except Exception:  # pragma: no cover - a worker pickles plain data; it is done all the same
            _log.exception("Worker pool: a worker's done message could not be read.")
            done = None
        if done != slot.job_id:  # pragma: no cover - a worker answers for the job it was given
            values = None
        job_id, slot.job_id, slot.preclaimed, slot.gave_back = slot.job_id, None, False, False
        now = time.monotonic()
        if ahead is not None:  # it claimed the next job sent ahead as it ended this one
            next_id, runs = ahead
            with contextlib.suppress(ValueError):
                slot.ahead.remove(next_id)
            if runs:
                slot.job_id, slot.given = next_id, now
            else:  # ended meanwhile (cancelled while it waited, purged): nothing ran
                self._forget(next_id)
                self._job_ended(next_id)
        if slot.job_id is None and slot.ahead:
            # It takes the next one sent ahead from its pipe, and claims it itself.
            slot.job_id, slot.given = slot.ahead.popleft(), now
        self._respawn_delay = 0.0
        if job_id is not None:
            self._forget(job_id)
            self._kills.pop(job_id, None)
            self._requeued.discard(job_id)
            # Last: a waiter woken here may submit its next job at once, to this idle worker.
            self._job_ended(job_id, values, len(data))
        return job_id, values

    def _drain(self, slot: _Slot) -> None:
        """Handle what a dead worker sent before it died (its pipe keeps it): its last "done"
        says which job sent ahead it went on to."""
        while not slot.eof and (slot.has_message() or _readable(slot.conn)):
            self._read_messages(slot, check=False)

    def _reap(self, slot: _Slot, how: str | None, *, killed: str | None = None) -> None:
        """Handle the death of a worker. ``how`` it died, if the pool ended it, to end job
        ``killed``."""
        slot.process.join()
        self._drain(slot)
        moved = killed is not None and slot.job_id != killed
        if moved:
            # It ended that job just before it was stopped (what it said last came in between),
            # and went on to another: not the one the pool meant to stop.
            how = "its worker process was stopped by force as it ended a cancelled job before it"
        reason = how or slot.reason or exit_reason(slot.process.exitcode)
        pid = slot.process.pid
        self._slots.remove(slot)
        _close(slot.conn)
        _close(slot.lifeline)
        slot.process.close()
        # The jobs sent ahead never started: a worker reports the one it claimed as it ended its
        # job before it runs it. Queued again, each in its place, unless ended meanwhile.
        for job_id in slot.ahead:
            if self._unclaim(job_id, pid):
                self._requeue(job_id)
            else:
                self._forget(job_id)
                self._job_ended(job_id)
        slot.ahead.clear()
        if slot.job_id is not None:
            job_id = slot.job_id
            self._kills.pop(job_id, None)
            if (
                (how is None or moved)
                and slot.reason is None
                and not slot.preclaimed
                and job_id not in self._requeued
                and not self._claimed(job_id)
            ):
                # It died before it took the job (killed from outside): the job never started.
                self._requeued.add(job_id)
                self._requeue(job_id)
            else:
                self._forget(job_id)
                self.backend._lost(job_id, reason)
                self._job_ended(job_id)
        elif how is None:
            # Died idle, most often at start-up (an import error in __main__): do not spin.
            self._respawn_delay = min(max(self._respawn_delay * 2, 0.1), 5.0)
            self._next_spawn = time.monotonic() + self._respawn_delay
            _log.error("A pool worker of %s died while idle: %s.", self.backend.directory, reason)

    def _claimed(self, job_id: str) -> bool:
        return self.backend.get(f"claim:{job_id}") is not MISSING

    def _unclaim(self, job_id: str, pid: int) -> bool:
        """Remove the claim worker ``pid`` made of a job sent ahead that it never started;
        whether the job may run (it is not claimed by anyone else: a cancel)."""
        key = f"claim:{job_id}"
        claim = self.backend.get(key)
        if claim is MISSING:
            return True
        by = claim.get("by", "") if isinstance(claim, dict) else ""
        return by.rsplit(":", 2)[-2:-1] == [str(pid)] and self.backend.delete_if(key, claim)

    def _run_kills(self) -> None:
        now = time.time()
        for job_id, deadline in list(self._kills.items()):
            slot = next((s for s in self._slots if s.job_id == job_id), None)
            if slot is None:
                if job_id not in self._known:  # not ours, or already over
                    del self._kills[job_id]
                continue
            if deadline <= now:
                del self._kills[job_id]
                # It may have ended the job just now, and gone on to one sent ahead.
                self._read_messages(slot)
                if slot.job_id != job_id:
                    continue
                slot.process.kill()
                self._reap(slot, "it was stopped by force after cancellation", killed=job_id)

    def _dispatch(self) -> None:
        if self._queue:
            self._started = True
        if self._started:
            while len(self._slots) < self.workers and time.monotonic() >= self._next_spawn:
                self._spawn()
        self._dispatch_idle()

    def _dispatch_idle(self) -> None:
        """The next queued jobs to idle workers; then, while jobs remain, ahead to busy ones."""
        for slot in self._slots:
            if not self._queue:
                return
            if slot.job_id is None and not slot.ahead:
                job_id = self._send_next(slot)
                if job_id is not None:
                    slot.job_id, slot.given = job_id, time.monotonic()
        for depth in range(1, AHEAD + 1):  # one each first, then a second each
            for slot in self._slots:
                if not self._queue:
                    return
                if (
                    slot.job_id is not None
                    and len(slot.ahead) < depth
                    and not (slot.handing or slot.gave_back or slot.reason is not None)
                    and slot.job_id not in self._kills  # (to be stopped by force: it would be too)
                ):
                    job_id = self._send_next(slot)
                    if job_id is not None:
                        slot.ahead.append(job_id)

    def _send_next(self, slot: _Slot) -> str | None:
        """Send the first queued job to a worker; its id, or ``None`` if the worker is dying
        (the job stays first in the queue, and the worker's sentinel will fire)."""
        job_id = self._queue.popleft()
        try:
            slot.conn.send_bytes(job_id.encode())
        except OSError:
            self._queue.appendleft(job_id)  # (it was first)
            return None
        return job_id

    def _spawn(self) -> None:
        conn, child_conn = self._ctx.Pipe()
        life_r, life_w = self._ctx.Pipe(duplex=False)
        process = self._ctx.Process(
            target=worker_main,
            args=(self.backend.directory, child_conn, life_r),
            name="longtask-worker",
            daemon=True,
        )
        process.start()
        child_conn.close()
        life_r.close()
        self._slots.append(_Slot(process, conn, life_w))
        self.pids.append(process.pid)
        _log.debug("Started pool worker %s for %s.", process.pid, self.backend.directory)

    def _recover(self) -> None:
        """Queue the jobs nobody is running; end those the previous host was running."""
        backend = self.backend
        running_here = {s.job_id for s in self._slots if s.job_id is not None}
        found: list[tuple[float, str]] = []
        for key in backend.scan("job:"):
            job_id = key[4:]
            if job_id in self._known or job_id in running_here:
                continue
            record = backend.get(key)
            if record is MISSING:
                continue
            status = record["status"]
            if status == JobStatus.RUNNING.value:
                backend._lost(job_id, "the process hosting the worker pool died")
            elif status == JobStatus.QUEUED.value:
                if backend.get(f"claim:{job_id}") is MISSING:
                    found.append((record["created"], job_id))
                else:  # claimed by a worker of the dead host, which never started it
                    backend._lost(job_id, "the process hosting the worker pool died")
        for _, job_id in sorted(found):
            self._push(job_id)
        if found:
            _log.info("Worker pool of %s: queued %d waiting job(s).", backend.directory, len(found))


def _open_fifo_reader(path: str) -> tuple[int, int]:
    try:
        os.mkfifo(path, 0o600)
    except FileExistsError:
        import stat

        if not stat.S_ISFIFO(os.stat(path).st_mode):
            os.unlink(path)
            os.mkfifo(path, 0o600)
    reader = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    # Our own writer keeps the pipe from reporting end-of-file whenever the last client closes.
    keep = os.open(path, os.O_WRONLY | os.O_NONBLOCK)
    return reader, keep


def _copy(values: dict[str, t.Any]) -> dict[str, t.Any]:
    """Each waiter its own copy of what a job's end wrote: a caller may change the record."""
    return {k: dict(v) if isinstance(v, dict) else v for k, v in values.items()}


def _new_poller() -> t.Any:
    return select.epoll() if _EPOLL else select.poll()


def _readable(conn: t.Any) -> bool:
    """Whether a message (or the end of the pipe) waits on ``conn``, without blocking.

    (``poll``, not ``select``: a web process may have more than 1,024 descriptors open.)
    """
    poller = select.poll()
    try:
        poller.register(conn.fileno(), select.POLLIN)
    except (OSError, ValueError):  # closed
        return False
    return bool(poller.poll(0))


def _close(conn: t.Any) -> None:
    close = getattr(conn, "close", None)  # (a poll() object has none)
    if close is None:
        return
    try:
        close()
    except OSError:  # pragma: no cover
        pass


class FifoClient:
    """Sends messages to whichever process hosts the pool of a directory."""

    def __init__(self, backend: DiskcacheBackend) -> None:
        self.backend = backend
        self._path = os.path.join(backend.directory, FIFO_NAME)
        self._fd: int | None = None
        self._lock = threading.Lock()

    def reset(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            try:
                os.close(fd)
            except OSError:
                pass

    def send(self, line: str) -> bool:
        """Deliver ``line``; return ``False`` when no host is listening (nothing to do then)."""
        data = line.encode("ascii") + b"\n"
        with self._lock:
            for _ in range(2):
                if self._fd is None:
                    try:
                        self._fd = os.open(self._path, os.O_WRONLY | os.O_NONBLOCK)
                    except OSError as exc:
                        if exc.errno in (errno.ENXIO, errno.ENOENT):
                            return False  # no host yet: the next one finds queued jobs in storage
                        raise
                try:
                    os.write(self._fd, data)
                    return True
                except BlockingIOError:  # the host is behind: leave the message in storage
                    self.backend.cache.push(data, prefix=MAILBOX)
                    return True
                except BrokenPipeError:  # the host died since we opened it
                    self.reset()
            return False
