"""Coroutine jobs: an ``async def`` task runs on this process's event loop.

Each process that runs jobs has at most one loop, in a daemon thread of its own
(``longtask-loop``), started with the first coroutine job. A job's own thread (the one that
runs :func:`~flask_longtask.worker.execute`: a ThreadBackend thread, a Celery pool process's
main thread, a thread of a pool worker that runs coroutine jobs) claims the job and writes its
end as for any job; in between, :func:`run_job` starts the coroutine as a task on the loop, in
a copy of that thread's context (so ``current_job`` and the Flask app context are the job's
own, whatever else runs on the loop), and waits for it.

Cancellation: when the job's ticker sees its cancel flag (or its time limit pass), the task is
cancelled: ``asyncio.CancelledError`` at its next ``await``. The job's thread then waits up to
``LONGTASK_CANCEL_GRACE`` for it to end; one that swallowed the error and goes on is left to
itself and the job ends "cancelled" (or failed ``TimeLimitExceeded``) from the job's thread,
which owns that deadline. If the loop is blocked by that very coroutine at the deadline, and the
process may be stopped (:data:`on_stuck`: a pool worker of coroutine jobs), the process exits.

A coroutine that blocks the loop (``time.sleep``, CPU work) is the user's bug: every coroutine
of the process waits meanwhile. :meth:`Loop.blocked_by` tells the ticker which job blocks it, and
that job's heartbeat stops while it does, so that the job (and not its neighbours, which go on
beating) is found lost once ``LONGTASK_HEARTBEAT_TIMEOUT`` passes.
"""

from __future__ import annotations

import asyncio
import atexit
import contextvars
import inspect
import logging
import os
import threading
import time
import typing as t

if t.TYPE_CHECKING:  # pragma: no cover
    from .worker import JobContext

_log = logging.getLogger(__name__)

#: How often the loop notes that it runs (seconds).
PULSE = 0.1
#: How long the loop may go without a pulse before it counts as blocked (seconds).
STALL = 1.0
#: Called with a reason, and whether the coroutine blocks the loop, when a cancelled coroutine
#: has not ended by its grace's end; it may end the process, the job's end then being its
#: backend's (a pool worker of coroutine jobs exits if the loop is blocked, its host failing its
#: jobs; a Celery prefork process exits whatever, as at a sync job's forced stop). ``None``, or
#: if it returns: the job ends from its thread and its coroutine is left to itself (ThreadBackend).
on_stuck: t.Callable[[str, bool], None] | None = None


#: Coroutine jobs one worker runs at once on its loop (``LONGTASK_ASYNC_CONCURRENCY``).
CONCURRENCY = 100


def concurrency_value(value: t.Any, where: str = "LONGTASK_ASYNC_CONCURRENCY") -> int:
    """A checked ``LONGTASK_ASYNC_CONCURRENCY`` (``None``: the default)."""
    if value is None:
        return CONCURRENCY
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 100_000:
        raise ValueError(f"{where} must be a whole number from 1 to 100000, not {value!r}.")
    return value


def is_coroutine_task(func: t.Callable[..., t.Any]) -> bool:
    """Whether a task's function is a coroutine function (``async def``)."""
    return inspect.iscoroutinefunction(func)


class Loop:
    """An event loop running in a daemon thread of its own."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        #: When the loop last ran its pulse (monotonic): a loop blocked longer than STALL is late.
        self.pulse = time.monotonic()
        self.thread = threading.Thread(target=self._run, name="longtask-loop", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.call_soon(self._beat)
        self.loop.run_forever()

    def _beat(self) -> None:
        self.pulse = time.monotonic()
        self.loop.call_later(PULSE, self._beat)

    def blocked_by(self, task: asyncio.Task[t.Any] | None) -> bool:
        """Whether ``task`` has held the loop for more than :data:`STALL` seconds."""
        return (
            task is not None
            and time.monotonic() - self.pulse > STALL
            and asyncio.current_task(self.loop) is task  # (read from another thread: a dict lookup)
        )

    def close(self) -> None:
        """Stop the loop and close it, unless a coroutine blocks it (then leave it be)."""
        if self.loop.is_closed():
            return
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(1.0)
        if not self.thread.is_alive():
            self.loop.close()


_shared: tuple[int, Loop] | None = None
_shared_lock = threading.Lock()


def shared() -> Loop:
    """This process's loop, started at the first call (again in a forked child)."""
    global _shared
    with _shared_lock:
        if _shared is None or _shared[0] != os.getpid():
            _shared = (os.getpid(), Loop())
        return _shared[1]


@atexit.register
def _close_shared() -> None:
    if _shared is not None and _shared[0] == os.getpid():
        _shared[1].close()


class _Running:
    """One coroutine job on the loop, as its job's thread follows it."""

    def __init__(self, loop: Loop, ctx: JobContext) -> None:
        self.loop = loop
        self.ctx = ctx
        self.task: asyncio.Task[t.Any] | None = None
        #: Set when the task ends, or a cancel is first seen: the job's thread looks then.
        self.woken = threading.Event()
        self.done = False
        self.value: t.Any = None
        self.error: BaseException | None = None

    def start(self, func: t.Callable[..., t.Any], args: t.Any, kwargs: t.Any) -> None:
        """In the loop's thread, in the job's context: make the coroutine and its task."""
        try:
            self.task = self.loop.loop.create_task(func(*args, **kwargs))
        except BaseException as exc:  # (the call itself raised: nothing was made)
            self.error, self.done = exc, True
            self.woken.set()
            return
        self.task.add_done_callback(self._ended)
        if self.ctx._cancelled:  # (seen before the task existed)
            self.task.cancel()

    def _ended(self, task: asyncio.Task[t.Any]) -> None:
        try:
            self.value = task.result()
        except BaseException as exc:  # CancelledError too
            self.error = exc
        self.done = True
        self.woken.set()

    def cancel(self) -> None:
        """From the ticker's thread: deliver CancelledError at the coroutine's next await."""
        self.loop.loop.call_soon_threadsafe(self._cancel)
        self.woken.set()

    def _cancel(self) -> None:
        if self.task is not None:
            self.task.cancel()

    def blocked(self) -> bool:
        return not self.done and self.loop.blocked_by(self.task)


def run_job(ctx: JobContext, func: t.Callable[..., t.Any], args: t.Any, kwargs: t.Any, grace: float) -> t.Any:
    """In a job's thread: run ``func(*args, **kwargs)`` on this process's loop and return its
    value (or raise its error). A cancel of the job reaches the coroutine as CancelledError; it
    then ends with ``None``, cancelled (:func:`~flask_longtask.ending.outcome` says so)."""
    loop = shared()
    running = _Running(loop, ctx)
    context = contextvars.copy_context()  # current_job and the app context, as this thread has them
    loop.loop.call_soon_threadsafe(running.start, func, args, kwargs, context=context)
    ctx._blocked = running.blocked
    ctx._on_cancel = running.cancel
    if ctx._cancelled:
        running.cancel()
    deadline: float | None = None
    cancelled_at = 0.0
    while not running.done:
        timeout = None if deadline is None else deadline - time.monotonic()
        if timeout is not None and timeout <= 0:
            break  # the grace is over
        running.woken.wait(timeout)
        running.woken.clear()
        if deadline is None and ctx._cancelled:
            cancelled_at = time.monotonic()
            deadline = cancelled_at + grace
    ctx._blocked = None
    if not running.done:  # it swallowed the CancelledError, or it blocks the loop
        what = "time limit" if ctx._limited else "cancel"
        if on_stuck is not None:  # blocked: the loop has not turned once since the cancel was sent
            blocked = loop.pulse < cancelled_at and asyncio.current_task(loop.loop) is running.task
            how = "blocked the event loop" if blocked else "went on"
            on_stuck(f"a coroutine job ({ctx.id}) {how} past its {what}'s grace of {grace:g} s", blocked)
        _log.warning(
            "Job %s: its coroutine did not end within %g s of its %s; it is left to itself.", ctx.id, grace, what
        )
        running.cancel()  # (once more, in case it awaits again)
        return None
    if running.error is None:
        return running.value
    if isinstance(running.error, asyncio.CancelledError):
        if ctx._cancelled:
            return None
        raise RuntimeError("The job's coroutine was cancelled from inside (asyncio.CancelledError).") from running.error
    raise running.error


def run_inline(func: t.Callable[..., t.Any], args: t.Any, kwargs: t.Any) -> t.Any:
    """A coroutine task called as a plain function: run it to its end on a new loop."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(func(*args, **kwargs))
    raise RuntimeError(
        f"{getattr(func, '__qualname__', func)!r} is an async task called inline inside a running event"
        " loop: await its function instead (task.func(...)), or submit it."
    )


def refuse_coroutine(value: t.Any, func: t.Callable[..., t.Any]) -> None:
    """A plain function that returned a coroutine (a wrapper around an ``async def``): close it
    (no "never awaited" warning) and say how to write the task."""
    if inspect.iscoroutine(value):
        value.close()
        raise TypeError(
            f"{getattr(func, '__qualname__', func)!r} returned a coroutine: declare the task's function"
            " itself 'async def' (a wrapper must be one too, or use inspect.markcoroutinefunction)."
        )
