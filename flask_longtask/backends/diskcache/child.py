"""The body of a pool worker process (see :mod:`flask_longtask.backends._pool`)."""

from __future__ import annotations

import logging
import os
import pickle
import select
import signal
import threading
import time
import typing as t

_log = logging.getLogger(__name__)

#: True inside a pool worker process: a backend there only stores, it never hosts a pool.
IN_WORKER = False
#: The job this pool worker runs (its end is reported with its "done"; see DiskcacheBackend).
RUNNING: str | None = None
#: The largest "done" message that carries what the job's end wrote (its record and result);
#: a larger one is sent as the job id alone, and a waiter reads the result from storage.
END_INLINE = 16 * 1024
#: Seconds a worker looks for the host's "go" before it blocks (see _Go), when this process
#: may run on more than one CPU (on one, looking only delays the host's commit).
GO_SPIN = 0.0005
#: Seconds a job runs before its worker gives back the jobs the pool sent it ahead (checked at
#: the ticker's ticks, every ``LONGTASK_PROGRESS_INTERVAL``): a queued job waits behind a long one
#: for about that long at most, while another worker is free.
HAND_BACK_AFTER = 0.02
#: This worker's pipe to the host, and a poll of it (set in worker_main).
_conn: t.Any = None
_poller: t.Any = None
#: Held to read the pipe while a job runs (the ticker thread may give back jobs sent ahead).
_pipe_lock = threading.Lock()
#: Held to write to the pipe: the main thread and the ticker's hook both send.
_send_lock = threading.Lock()
#: When the job this worker runs started (monotonic), ``None`` between jobs.
_since: float | None = None
#: Whether the job this worker runs has looked for a job sent ahead as it ended (once per job).
_took = False
#: The CPUs this process may run on (the pool host looks for a job's end only when one is free).
CPUS = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def _watch_lifeline(lifeline: t.Any) -> None:
    try:
        lifeline.recv_bytes()
    except (EOFError, OSError):
        pass
    os._exit(0)  # the host is gone (or closed the pool): stop now, whatever runs


class _Go:
    """Waits for the host's word on a job it handed over while it stored the job's records:
    ``G`` (stored: run it) or ``N`` (not stored: drop it)."""

    def __init__(self, conn: t.Any, poller: t.Any) -> None:
        self.conn = conn
        self.poller = poller  # a select.poll() of conn: a look costs one system call
        self.answer: bool | None = None

    def __call__(self) -> bool:
        global _since
        # The word comes as soon as the host's commit is done, which this worker's wake-up and
        # preparation overlapped: look for it for a moment before sleeping, which would cost
        # another wake-up.
        deadline = time.perf_counter() + (GO_SPIN if CPUS > 1 else 0.0)
        try:
            while not self.poller.poll(0) and time.perf_counter() < deadline:
                os.sched_yield()  # a runnable thread on this CPU (the host's commit?) goes first
            self.answer = self.conn.recv_bytes() == b"G"
            if self.answer:  # it runs from now (see _hand_back)
                _since = time.monotonic()
        except (EOFError, OSError):  # pragma: no cover - the host died: the lifeline ends us
            self.answer = False
        return self.answer


def take_ahead(*, cancelled: bool = False) -> str | None:
    """In a pool worker ending its job: the next job the pool sent it ahead, if one waits, to be
    claimed with the end (once per job).

    Not when receivers of the end signals are connected, or the app has teardown functions:
    they run after the end, in this process, and may be slow (the claimed job would wait, read
    "running" meanwhile, its heartbeat not yet started, and could be found lost). Nor
    when the job ends ``cancelled``: the host may stop this worker by force any moment now, and
    no other job may be running then. The jobs sent ahead are given back, to run on whichever
    worker is free first.
    """
    global _took
    if _took or _poller is None:
        return None
    _took = True
    with _pipe_lock:
        try:
            if not _poller.poll(0):
                return None
            if cancelled or not _ends_are_quick():
                _give_back()
                return None
            return t.cast(bytes, _conn.recv_bytes()).decode()
        except (EOFError, OSError):  # the host is gone: the lifeline ends this process
            return None


def _ends_are_quick() -> bool:
    """Whether nothing but storage runs between a job's end and the next job's start here: no
    receiver of a job's end signals, or of Flask's app context teardown signals, is connected in
    this process, and the app has no teardown functions (they run as the job's app context
    ends)."""
    from flask import appcontext_popped, appcontext_tearing_down, current_app

    from ... import signals

    if signals.job_succeeded.receivers or signals.job_failed.receivers or signals.job_cancelled.receivers:
        return False
    if appcontext_tearing_down.receivers or appcontext_popped.receivers:
        return False
    return not (current_app and current_app.teardown_appcontext_funcs)


def give_back(job_id: str) -> None:
    """Give back a job taken ahead (:func:`take_ahead`) but not claimed, and those behind it."""
    with _pipe_lock:
        try:
            _give_back([job_id.encode()])
        except (EOFError, OSError):  # the host is gone: the lifeline ends this process
            pass


def _give_back(ids: list[bytes] | None = None) -> None:
    """Send back the ids of the jobs sent ahead that wait in the pipe (under ``_pipe_lock``)."""
    ids = ids or []
    while _poller.poll(0):
        ids.append(_conn.recv_bytes())
    if ids:  # (before this job's "done", which the main thread sends under the same lock)
        _send(b"R" + b" ".join(ids))


def _hand_back(now: float) -> None:
    """A ticker hook: when this worker's job has run for :data:`HAND_BACK_AFTER` seconds, give
    back the jobs the pool sent it ahead, so that another worker may run them meanwhile."""
    since = _since  # (the main thread may clear it meanwhile)
    if since is None or now - since < HAND_BACK_AFTER or not _pipe_lock.acquire(blocking=False):
        return
    try:
        if _since is not None:
            _give_back()
    except (EOFError, OSError):  # the host is gone: the lifeline ends this process
        pass
    finally:
        _pipe_lock.release()


def _send(message: bytes) -> None:
    with _send_lock:
        _conn.send_bytes(message)


def worker_main(directory: str, conn: t.Any, lifeline: t.Any) -> None:
    """The body of a pool worker process: run the jobs the host sends, one at a time.

    A message is a job id, or ``P`` and the pickle of ``(job id, claimed)`` for a job the host
    has claimed for this worker (see :func:`flask_longtask.worker.execute`), followed by ``G``
    once that claim is stored, or ``N`` if it could not be. While a job runs, the host may send
    the ids of the next ones ahead (see ``PoolHost``): the worker claims the first as it ends
    its job, in the same transaction, and runs it next.

    The worker answers each job with ``E`` and the pickle of ``(job id, {key: value} or None,
    ahead)``: what the job's end wrote (``None`` when it is large: the host's waiters read it),
    and ``(next job id, whether it runs it)`` for a job sent ahead that it claimed or tried to
    (``None`` if none was waiting). Jobs sent ahead that it gives back (its own job runs long)
    it sends as ``R`` and their ids; when it could not store an outcome, ``!`` and why, and it
    exits.
    """
    global IN_WORKER, RUNNING, _conn, _poller, _since, _took
    IN_WORKER = True
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl+C reaches the host, which ends us
    threading.Thread(target=_watch_lifeline, args=(lifeline,), name="longtask-lifeline", daemon=True).start()

    from ...worker import _ticker, execute, is_runnable
    from ..base import MISSING
    from . import DiskcacheBackend

    backend = DiskcacheBackend(directory, embedded=False)
    poller = select.poll()
    poller.register(conn.fileno(), select.POLLIN)
    _conn, _poller = conn, poller
    _ticker.hooks.append(_hand_back)
    claimed_next: tuple[str, t.Any, t.Any] | None = None  # (job id, claimed, cancel flag)
    while True:
        go = None
        cancelled: t.Any = MISSING
        if claimed_next is not None:
            job_id, claimed, cancelled = claimed_next
            claimed_next = None
        else:
            try:
                data = conn.recv_bytes()
            except (EOFError, OSError):  # pragma: no cover - the host went away; the lifeline ends us first
                return
            if data[:1] == b"P":
                job_id, claimed = pickle.loads(data[1:])
                go = _Go(conn, poller)
            else:
                job_id, claimed = data.decode(), None
        RUNNING, _took = job_id, False
        if go is None:
            _since = time.monotonic()
        try:
            execute(backend, job_id, claimed=claimed, go=go, cancelled=cancelled)
        except Exception as exc:  # pragma: no cover - tested by test_full_disk_in_a_worker_...: a
            # process whose file writes fail cannot save coverage data either.
            # Storage failed under the job (disk full, directory gone): this process cannot record
            # the outcome, so it tells the host, which records it as lost, and makes way for a new one.
            _log.exception("Job %s: its outcome could not be stored.", job_id)
            _send(f"!the worker could not store the job's outcome: {type(exc).__name__}: {exc}".encode())
            os._exit(70)
        with _pipe_lock:  # jobs given back from here on are given back before this "done"
            _since = None
        if go is not None and go.answer is False:
            continue  # its records could not be stored: nothing ran, and the host took us back
        ahead = None
        taken = backend.take_next()
        if taken is not None:
            next_id, claim = taken
            record, request, flag = claim.values if claim.won else (MISSING, MISSING, MISSING)
            runs = claim.won and is_runnable(record)
            if runs:
                claimed_next = (next_id, (claim.value["at"], record, request), flag)
            ahead = (next_id, runs)
        # With what the end wrote, so that a waiter in the host need not read it (a large result
        # is not even pickled to see that it is).
        end = backend.take_end(job_id)
        if end is not None and sum(len(v) for v in end.values() if isinstance(v, bytes)) >= END_INLINE:
            end = None
        message = b"E" + pickle.dumps((job_id, end, ahead), pickle.HIGHEST_PROTOCOL)
        if len(message) > END_INLINE:
            message = b"E" + pickle.dumps((job_id, None, ahead), pickle.HIGHEST_PROTOCOL)
        _send(message)
