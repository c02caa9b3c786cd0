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
        # The word comes as soon as the host's commit is done, which this worker's wake-up and
        # preparation overlapped: look for it for a moment before sleeping, which would cost
        # another wake-up.
        deadline = time.perf_counter() + (GO_SPIN if CPUS > 1 else 0.0)
        try:
            while not self.poller.poll(0) and time.perf_counter() < deadline:
                os.sched_yield()  # a runnable thread on this CPU (the host's commit?) goes first
            self.answer = self.conn.recv_bytes() == b"G"
        except (EOFError, OSError):  # pragma: no cover - the host died: the lifeline ends us
            self.answer = False
        return self.answer


def worker_main(directory: str, conn: t.Any, lifeline: t.Any) -> None:
    """The body of a pool worker process: run the jobs the host sends, one at a time.

    A message is a job id, or ``P`` and the pickle of ``(job id, claimed)`` for a job the host
    has claimed for this worker (see :func:`flask_longtask.worker.execute`), followed by ``G``
    once that claim is stored, or ``N`` if it could not be. The worker
    answers each with its job id, or with ``E`` and the pickle of ``(job id, {key: value})``
    of what the job's end wrote; or, when it could not store an outcome, ``!`` and why.
    """
    global IN_WORKER, RUNNING
    IN_WORKER = True
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl+C reaches the host, which ends us
    threading.Thread(target=_watch_lifeline, args=(lifeline,), name="longtask-lifeline", daemon=True).start()

    from ..worker import execute
    from .diskcache import DiskcacheBackend

    backend = DiskcacheBackend(directory, embedded=False)
    poller = select.poll()
    poller.register(conn.fileno(), select.POLLIN)
    while True:
        try:
            data = conn.recv_bytes()
        except (EOFError, OSError):  # pragma: no cover - the host went away; the lifeline ends us first
            return
        go = None
        if data[:1] == b"P":
            job_id, claimed = pickle.loads(data[1:])
            go = _Go(conn, poller)
        else:
            job_id, claimed = data.decode(), None
        RUNNING = job_id
        try:
            execute(backend, job_id, claimed=claimed, go=go)
        except Exception as exc:  # pragma: no cover - tested by test_full_disk_in_a_worker_...: a
            # process whose file writes fail cannot save coverage data either.
            # Storage failed under the job (disk full, directory gone): this process cannot record
            # the outcome, so it tells the host, which records it as lost, and makes way for a new one.
            _log.exception("Job %s: its outcome could not be stored.", job_id)
            conn.send_bytes(f"!the worker could not store the job's outcome: {type(exc).__name__}: {exc}".encode())
            os._exit(70)
        if go is not None and go.answer is False:
            continue  # its records could not be stored: nothing ran, and the host took us back
        # With what the end wrote, so that a waiter in the host need not read it (a large result
        # is not even pickled to see that it is).
        message = job_id.encode()
        end = backend.take_end(job_id)
        if end is not None and sum(len(v) for v in end.values() if isinstance(v, bytes)) < END_INLINE:
            with_end = b"E" + pickle.dumps((job_id, end), pickle.HIGHEST_PROTOCOL)
            if len(with_end) <= END_INLINE:
                message = with_end
        conn.send_bytes(message)
