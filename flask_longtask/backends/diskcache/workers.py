"""The pool's worker processes, as the host sees them: one :class:`Worker` each."""

from __future__ import annotations

import collections
import logging
import select
import signal
import threading
import time
import typing as t
from dataclasses import dataclass

from . import wire
from .child import worker_main

_log = logging.getLogger(__name__)


class Worker:
    """One worker process, its pipe, and the jobs the host gave it."""

    __slots__ = (
        "ahead",
        "conn",
        "coroutines",
        "draining",
        "eof",
        "error",
        "frames",
        "gave_back",
        "given",
        "handing",
        "held",
        "idle_since",
        "job_id",
        "lifeline",
        "mark",
        "pid",
        "preclaimed",
        "process",
        "reason",
        "send_lock",
        "sentinel",
        "settled",
        "started",
        "waiting",
        "watched",
    )

    def __init__(self, process: t.Any, conn: t.Any, lifeline: t.Any) -> None:
        self.process = process
        #: Its process id (kept: a closed process object no longer tells it).
        self.pid: int = process.pid
        self.conn = conn
        #: The write end of its lifeline: when it closes (the host dies), the worker exits.
        self.lifeline = lifeline
        #: Held around each message sent to it: threads of the host's process send to one worker
        #: at once (a loop worker's ``Handover`` from a submitting thread, ``Run`` from the
        #: dispatcher), and a message over 16 KiB takes two writes, which must not interleave.
        self.send_lock = threading.Lock()
        #: Its messages, read whole (see :class:`wire.Frames`).
        self.frames = wire.Frames(conn.fileno())
        #: The descriptor of its exit sentinel.
        self.sentinel: int = process.sentinel
        #: The job it runs (or was handed), ``None`` while idle.
        self.job_id: str | None = None
        #: A worker of coroutine jobs (.loops): the jobs it runs at once (it has no job_id).
        self.coroutines: set[str] = set()
        #: A worker of coroutine jobs that said ``Draining`` (a coroutine went on past its
        #: cancel's grace): it is sent no more jobs, and retired once those it runs have ended.
        self.draining = False
        #: When it was given that job (monotonic).
        self.given = 0.0
        #: The jobs sent to it ahead, while it runs one (in its pipe, in this order).
        self.ahead: collections.deque[str] = collections.deque()
        #: Whether it gave back the jobs sent ahead (its job runs long): none until it ends.
        self.gave_back = False
        #: Whether it was reserved for a job of the host's process that has not had its go yet:
        #: nothing may be sent ahead of that word.
        self.handing = False
        #: Whether its job was claimed for it when it was handed over (not by the worker).
        self.preclaimed = False
        #: Why it is about to exit, when it said so first (it could not store an outcome).
        self.reason: str | None = None
        #: The error it failed with as it started, importing the app (:class:`.wire.StartFailed`).
        self.error: dict[str, str] | None = None
        #: Whether a thread waiting for its job reads its pipe (the dispatcher then does not).
        self.watched = False
        #: Whether its pipe reached end-of-file (it died; the dispatcher reaps it).
        self.eof = False
        #: The CPU it had asked for (seconds), and when (monotonic), at the last tick during which
        #: every worker was busy; whether its job was judged waiting then (see :mod:`.elastic`).
        self.mark: tuple[float, float] | None = None
        self.waiting: bool | None = None
        #: Whether it is given no job for now: the pool has more workers than CPUs, and its jobs
        #: burn CPU (see :mod:`.elastic`); it retires once idle long enough.
        self.held = False
        #: Whether it has ended a job: it is past its start (importing the app burns CPU).
        self.settled = False
        #: When it was started (monotonic).
        self.started = time.monotonic()
        #: Since when (monotonic) the host has seen it idle, while the pool is above its minimum.
        self.idle_since: float | None = None

    @property
    def jobless(self) -> bool:
        """Whether it has no job: none running, sent ahead or being handed to it, and it is not
        about to exit."""
        return self.job_id is None and not (self.ahead or self.handing) and self.reason is None

    @property
    def idle(self) -> bool:
        """Whether a job may be given to it."""
        return self.jobless and not self.held

    def send(self, message: wire.Run | wire.Handover | wire.Go) -> bool:
        """Send it a message; ``False`` if it is dying (its sentinel fires soon)."""
        data = message.encode()
        try:
            with self.send_lock:
                self.conn.send_bytes(data)
        except (OSError, ValueError):
            return False
        return True

    def readable(self) -> bool:
        """Whether a message (or the end of its pipe) waits, without blocking."""
        return self.frames.has_message() or readable(self.conn)

    def stop(self, deadline: float) -> bool:
        """Make it exit: close its lifeline (it exits at once), wait for it until ``deadline``
        (monotonic), kill it if it is still running, and wait for that; whether it exited."""
        close(self.lifeline)
        self.process.join(max(0.0, deadline - time.monotonic()))
        if self.process.exitcode is None:
            self.process.kill()
            self.process.join(5)
        return self.process.exitcode is not None

    def close(self) -> bool:
        """Close its pipe and its lifeline (it exits at once, if it has not), and its process
        object if the process has exited; whether it had (then nothing of it is left to close)."""
        close(self.conn)
        close(self.lifeline)
        if self.process.exitcode is None:
            return False
        self.process.close()
        return True

    def view(self) -> WorkerView:
        coroutines = tuple(sorted(self.coroutines))
        return WorkerView(
            self.pid, self.job_id, tuple(self.ahead), self.gave_back, self.watched, self.waiting, coroutines
        )


@dataclass(frozen=True)
class WorkerView:
    """What :meth:`DiskcacheBackend.pool_workers` tells of one worker process."""

    #: Its process id.
    pid: int
    #: The job it runs, ``None`` while idle.
    job_id: str | None
    #: The queued jobs sent to it ahead of its job's end, in order.
    ahead: tuple[str, ...]
    #: Whether it gave back what was sent ahead, because its job runs long.
    gave_back: bool
    #: Whether a thread waiting for its job in the host's process reads its pipe.
    watched: bool
    #: Whether its job was judged waiting (not burning CPU) at the last tick during which every
    #: worker was busy and jobs were queued; ``None`` when not judged (see :mod:`.elastic`).
    waiting: bool | None = None
    #: A worker of coroutine jobs (see :mod:`.loops`): the jobs it runs at once on its loop.
    coroutines: tuple[str, ...] = ()


#: Seconds a retired worker of coroutine jobs has to exit before it is killed (.loops).
RETIRE = 1.0


def spawn(ctx: t.Any, directory: str, secret: str | bytes) -> Worker:
    """Start a worker process for the pool of ``directory``, whose storage key comes from ``secret``."""
    return start_process(ctx, worker_main, directory, secret)


def start_process(ctx: t.Any, target: t.Callable[..., None], directory: str, secret: str | bytes) -> Worker:
    """Start a process of the pool that runs ``target(directory, secret, conn, lifeline)``."""
    conn, child_conn = ctx.Pipe()
    life_r, life_w = ctx.Pipe(duplex=False)
    args = (directory, secret, child_conn, life_r)
    process = ctx.Process(target=target, args=args, name="longtask-worker", daemon=True)
    process.start()
    child_conn.close()
    life_r.close()
    _log.debug("Started pool worker %s for %s.", process.pid, directory)
    return Worker(process, conn, life_w)


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


def readable(conn: t.Any) -> bool:
    """Whether a message (or the end of the pipe) waits on ``conn``, without blocking.

    (``poll``, not ``select``: a web process may have more than 1,024 descriptors open.)
    """
    poller = select.poll()
    try:
        poller.register(conn.fileno(), select.POLLIN)
    except (OSError, ValueError):  # closed
        return False
    return bool(poller.poll(0))


def close(conn: t.Any) -> None:
    """Close a connection or a poller, whatever state it is in."""
    fn = getattr(conn, "close", None)  # (a poll() object has none)
    if fn is None:
        return
    try:
        fn()
    except OSError:  # pragma: no cover
        pass
