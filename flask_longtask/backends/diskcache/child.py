"""A pool worker process: runs the jobs its host sends, one at a time (see ``docs/internals.md``).

Its state is one :class:`Child`, which :func:`current` returns inside a worker process (and
``None`` elsewhere): the backend asks it whether a job's end is this worker's own, and hands
it that end, so that it can claim the job sent ahead in the same transaction.
"""

from __future__ import annotations

import array
import fcntl
import logging
import os
import select
import signal
import termios
import threading
import time
import typing as t

from flask import appcontext_popped, appcontext_tearing_down, current_app

from ... import signals
from ...job import JobStatus
from ...store import JobStore, keys
from ...worker import Handoff, _ticker, claim_value, execute, is_runnable
from ..base import MISSING
from . import elastic, starting, wire
from .table import Claim

if t.TYPE_CHECKING:  # pragma: no cover
    from ...backends.base import JobEnd
    from . import DiskcacheBackend

_log = logging.getLogger(__name__)

#: Seconds a worker looks for the host's "go" before it blocks (see :meth:`Child.wait_go`),
#: when this process may run on more than one CPU (on one, looking only delays the host's commit).
GO_SPIN = 0.0005
#: The CPUs this process may use, within its cgroup's quota (the pool host looks for a job's end
#: only when one is free).
CPUS = elastic.CPUS

_current: Child | None = None


def current() -> Child | None:
    """This process's :class:`Child` when it is a pool worker, else ``None``."""
    return _current


class Child:
    """The state of one pool worker process: its pipe to the host and the job it runs."""

    def __init__(self, conn: t.Any) -> None:
        self.conn = conn
        self.poller = select.poll()  # a look at the pipe costs one system call
        self.poller.register(conn.fileno(), select.POLLIN)
        #: Held to read the pipe while a job runs (the ticker thread may give back jobs sent
        #: ahead: :meth:`hand_back`); a test job holds it to keep them.
        self.pipe_lock = threading.Lock()
        #: Held to write to the pipe: the main thread and the ticker's hook both send.
        self._send_lock = threading.Lock()
        #: The job this worker runs; its end is this worker's own (:meth:`end_job`).
        self.running: str | None = None
        #: When that job started running (monotonic); ``None`` between jobs.
        self.since: float | None = None
        #: Seconds a job runs before its worker gives back the jobs sent ahead (checked at the
        #: ticker's ticks): a queued job waits behind a long one about that long at most.
        self.hand_back_after = 0.02
        self._took = False  # whether the running job has looked for a job sent ahead
        #: The host's word on a job handed over: ``None`` until it came.
        self._went: bool | None = None
        #: What the end of the running job wrote, as this worker wrote it.
        self._end: dict[str, t.Any] | None = None
        #: The job it claimed ahead as it ended the last, with what that claim read.
        self._next: tuple[str, Claim] | None = None

    def send(self, message: wire.Done | wire.GiveBack | wire.Failing) -> None:
        with self._send_lock:
            self.conn.send_bytes(message.encode())

    def sent_ahead(self) -> int:
        """How many jobs sent ahead wait in the pipe, unread (while a job runs, nothing else can)."""
        waiting = array.array("i", [0])
        fcntl.ioctl(self.conn.fileno(), termios.FIONREAD, waiting)
        return waiting[0] // wire.framed_size(wire.Run("0" * 32))

    # -- a job's end ----------------------------------------------------------------------------

    def end_job(self, backend: DiskcacheBackend, end: JobEnd) -> bool | None:
        """Write the end of this worker's job; when the pool sent it a job ahead, claim that one
        in the same transaction (one commit and one lock instead of two). Not when the job ends
        cancelled: the host may stop this worker by force any moment now, and no other job may
        be running then."""
        table = backend.table
        next_id = self._take_ahead(cancelled=end.cancelled(True))
        claim = None
        if next_id is not None:
            claim = Claim(keys.claim(next_id), claim_value(), JobStore(backend).claim_expire, keys.to_run(next_id))
        chosen = table.add_then_write(
            end.key,
            end.at,
            end.expire,
            end.writes,
            unless=end.unless,
            otherwise=end.otherwise,
            then_claim=claim,
            ended=end.ended,
        )
        if claim is not None and next_id is not None:
            if claim.tried:
                self._next = (next_id, claim)
            else:  # ended otherwise (cancelled, or by someone else): the job goes back
                self._give_back_one(next_id)
        if chosen is not None:
            self._end = end.values(chosen)
        return chosen

    def _take_ahead(self, *, cancelled: bool) -> str | None:
        """The next job the pool sent ahead, if one waits, to be claimed with the end (once per
        job). Not when receivers of the end signals are connected, or the app has teardown
        functions: they run after the end, in this process, and may be slow (the claimed job
        would wait, read "running" meanwhile, its heartbeat not yet started, and could be found
        lost). Nor when the job ends cancelled. The jobs sent ahead are given back then."""
        if self._took:
            return None
        self._took = True
        with self.pipe_lock:
            try:
                if not self.poller.poll(0):
                    return None
                if cancelled or not _ends_are_quick():
                    self._give_back()
                    return None
                message = wire.decode_to_worker(self.conn.recv_bytes())
                return message.job_id if isinstance(message, wire.Run) else None
            except (EOFError, OSError):  # the host is gone: the lifeline ends this process
                return None

    def _give_back_one(self, job_id: str) -> None:
        with self.pipe_lock:
            try:
                self._give_back([job_id])
            except (EOFError, OSError):  # the host is gone: the lifeline ends this process
                pass

    def _give_back(self, ids: list[str] | None = None) -> None:
        """Send back the jobs sent ahead that wait in the pipe (under ``pipe_lock``)."""
        ids = ids or []
        while self.poller.poll(0):
            message = wire.decode_to_worker(self.conn.recv_bytes())
            if isinstance(message, wire.Run):
                ids.append(message.job_id)
        if ids:  # (before this job's "done", which the main thread sends under the same lock)
            self.send(wire.GiveBack(tuple(ids)))

    def hand_back(self, now: float) -> None:
        """A ticker hook: when this worker's job has run for :attr:`hand_back_after` seconds,
        give back the jobs sent ahead, so that another worker may run them meanwhile."""
        since = self.since  # (the main thread may clear it meanwhile)
        if since is None or now - since < self.hand_back_after or not self.pipe_lock.acquire(blocking=False):
            return
        try:
            if self.since is not None:
                self._give_back()
        except (EOFError, OSError):  # the host is gone: the lifeline ends this process
            pass
        finally:
            self.pipe_lock.release()

    def take_next(self) -> tuple[str, Claim] | None:
        """The job claimed (or tried) as the last one ended, with what that claim read, then
        forgotten; ``None`` if none was waiting then."""
        taken, self._next = self._next, None
        return taken

    # -- the loop -------------------------------------------------------------------------------

    def wait_go(self) -> bool:
        """Wait for the host's :class:`~wire.Go` on a job handed over while it stored the job's
        records; whether to run it."""
        # The word comes as soon as the host's commit is done, which this worker's wake-up and
        # preparation overlapped: look for it for a moment before sleeping, which would cost
        # another wake-up.
        deadline = time.perf_counter() + (GO_SPIN if CPUS > 1 else 0.0)
        try:
            while not self.poller.poll(0) and time.perf_counter() < deadline:
                os.sched_yield()  # a runnable thread on this CPU (the host's commit?) goes first
            message = wire.decode_to_worker(self.conn.recv_bytes())
        except (EOFError, OSError):  # pragma: no cover - the host died: the lifeline ends us
            self._went = False
            return False
        start = self._went = isinstance(message, wire.Go) and message.start
        if start:  # it runs from now (see hand_back)
            self.since = time.monotonic()
        return start

    def run(self, backend: DiskcacheBackend) -> None:
        """Run the jobs the host sends until the pipe closes."""
        handoff: Handoff | None = None  # a job claimed ahead, to run next
        while True:
            go: Handoff | None = None
            if handoff is not None:
                job_id = handoff.record["id"]
            else:
                try:
                    message = wire.decode_to_worker(self.conn.recv_bytes())
                except (EOFError, OSError):  # pragma: no cover - the host went away; the lifeline ends us first
                    return
                if isinstance(message, wire.Handover):
                    job_id = message.job_id
                    handoff = go = Handoff(message.started, message.record, message.request, go=self.wait_go)
                elif isinstance(message, wire.Run):
                    job_id = message.job_id
                else:  # pragma: no cover - a go comes only after a handover
                    continue
            self.running, self._took, self._end, self._went = job_id, False, None, None
            if go is None:
                self.since = time.monotonic()
            try:
                again = execute(backend, job_id, handoff=handoff) is JobStatus.QUEUED
            except Exception as exc:  # pragma: no cover - tested by test_full_disk_in_a_worker_...: a
                # process whose file writes fail cannot save coverage data either.
                # Storage failed under the job (disk full, directory gone): this process cannot
                # record the outcome, so it tells the host, which records it as lost, and makes way
                # for a new one.
                _log.exception("Job %s: its outcome could not be stored.", job_id)
                self.send(wire.Failing(f"the worker could not store the job's outcome: {type(exc).__name__}: {exc}"))
                os._exit(70)
            handoff = None
            with self.pipe_lock:  # jobs given back from here on are given back before this "done"
                self.since = None
            if go is not None and self._went is False:
                continue  # its records could not be stored: nothing ran, and the host took us back
            ahead = None
            taken = self.take_next()
            if taken is not None:
                next_id, claim = taken
                record, request, flag = claim.values if claim.won else (MISSING, MISSING, MISSING)
                runs = claim.won and is_runnable(record)
                if runs:
                    handoff = Handoff(
                        claim.value["at"],
                        t.cast("dict[str, t.Any]", record),
                        t.cast("dict[str, t.Any]", request),
                        cancelled=flag is not MISSING,
                    )
                ahead = (next_id, runs)
            end, self._end = self._end, None
            self.send(wire.Done(job_id, end, ahead, again))


def _ends_are_quick() -> bool:
    """Whether nothing but storage runs between a job's end and the next job's start here: no
    receiver of a job's end signals, or of Flask's app context teardown signals, is connected in
    this process, and the app has no teardown functions (they run as the job's app context
    ends)."""
    if signals.job_succeeded.receivers or signals.job_failed.receivers or signals.job_cancelled.receivers:
        return False
    if appcontext_tearing_down.receivers or appcontext_popped.receivers:
        return False
    return not (current_app and current_app.teardown_appcontext_funcs)


def _watch_lifeline(lifeline: t.Any) -> None:
    try:
        lifeline.recv_bytes()
    except (EOFError, OSError):
        pass
    os._exit(0)  # the host is gone (or closed the pool): stop now, whatever runs


def worker_main(directory: str, secret: str | bytes, conn: t.Any, lifeline: t.Any) -> None:
    """The body of a pool worker process (the target the host starts)."""
    global _current
    starting.started()  # (it imported the script: its failures are its jobs' from here on)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl+C reaches the host, which ends us
    threading.Thread(target=_watch_lifeline, args=(lifeline,), name="longtask-lifeline", daemon=True).start()

    from . import DiskcacheBackend

    child = _current = Child(conn)
    _ticker.hooks.append(child.hand_back)
    child.run(DiskcacheBackend(directory, embedded=False, secret_key=secret))  # (the host's key: its app's)
