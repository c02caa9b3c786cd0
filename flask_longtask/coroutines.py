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
``LONGTASK_CANCEL_GRACE`` for it to end. One still running then is handed to :data:`on_stuck`
(with whether the loop is blocked, see :meth:`_Running.settle`), which may end the process;
else it is left to itself, and the job ends "cancelled" (or failed ``TimeLimitExceeded``, not
retried: ``JobContext._abandoned``) from the job's thread, which owns that deadline.

A coroutine that blocks the loop (``time.sleep``, CPU work) is the user's bug: every coroutine
of the process waits meanwhile. :meth:`Loop.blocked_by` tells the ticker which job blocks it (the
job of the task the loop runs, found through the task's context: :data:`JOB`, so a task a job
started counts as that job's), and that job's heartbeat stops while it does, so that the job
(and not its neighbours, which go on beating) is found lost once ``LONGTASK_HEARTBEAT_TIMEOUT``
passes.

Nothing a coroutine raises ends the loop's thread (:class:`Loop`); at exit the loop is closed as
``asyncio.run`` closes its own (:meth:`Loop.close`); a forked child starts a loop of its own.
"""

from __future__ import annotations

import asyncio
import atexit
import contextvars
import inspect
import logging
import os
import sys
import threading
import time
import typing as t
import weakref

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


#: The job running in this context (:data:`~flask_longtask.worker.current_job` reads it): a
#: job's coroutine, and each task it starts, copy it with the job's context.
JOB: contextvars.ContextVar[JobContext] = contextvars.ContextVar("flask_longtask.current_job")

#: How long :meth:`Loop.close` waits for the coroutines it cancels (seconds).
CLOSE_TIMEOUT = 1.0

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


def _job_of(task: asyncio.Task[t.Any] | None) -> JobContext | None:
    """The job a task runs for (its context's :data:`JOB`): a job's own task, and each task it
    starts (``asyncio.gather``, ``create_task``, ``wait_for``...), which copy its context."""
    if task is None:
        return None
    if sys.version_info >= (3, 12):
        return task.get_context().get(JOB)
    return _jobs.get(task)  # (3.10, 3.11: the C Task does not show its context: _task_factory)


#: Before 3.12: the job each task of a loop was made for (see _task_factory).
_jobs: weakref.WeakKeyDictionary[asyncio.Task[t.Any], JobContext] = weakref.WeakKeyDictionary()


def _task_factory(
    loop: asyncio.AbstractEventLoop, coro: t.Any, context: contextvars.Context | None = None
) -> asyncio.Task[t.Any]:
    """Before 3.12, each task of a :class:`Loop` is made here: the job of the context it starts
    in is noted, for :func:`_job_of` (a task's context cannot be read there)."""
    if context is None:
        task: asyncio.Task[t.Any] = asyncio.Task(coro, loop=loop)
        job = JOB.get(None)
    else:
        task = asyncio.Task(coro, loop=loop, context=context)  # type: ignore[call-arg, unused-ignore]
        job = context.get(JOB)
    if job is not None:
        _jobs[task] = job
    return task


class Loop:
    """An event loop running in a daemon thread of its own.

    Nothing a coroutine raises ends the thread: a job's coroutine runs inside a guard that hands
    ``SystemExit`` and ``KeyboardInterrupt`` to the job's thread (asyncio re-raises them out of
    the loop), and anything that still escapes the loop (from a task outside any job, or a
    callback) is logged and the loop runs on. Only :meth:`close` ends it.
    """

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        if sys.version_info < (3, 12):
            self.loop.set_task_factory(_task_factory)
        #: When the loop last ran its pulse (monotonic): a loop blocked longer than STALL is late.
        self.pulse = time.monotonic()
        self._closing = False
        self.thread = threading.Thread(target=self._run, name="longtask-loop", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.call_soon(self._beat)
        while True:
            try:
                self.loop.run_forever()
            except BaseException:  # (run_forever has reset itself: it can run again)
                _log.exception("Flask-LongTask's event loop: an error escaped a task or callback; the loop runs on.")
            if self._closing:
                return

    def _beat(self) -> None:
        self.pulse = time.monotonic()
        self.loop.call_later(PULSE, self._beat)

    def stalled(self) -> bool:
        """Whether the loop has missed its pulse for more than :data:`STALL` seconds."""
        return time.monotonic() - self.pulse > STALL

    def holder(self) -> JobContext | None:
        """The job whose code the loop runs now (its own task, or one it started), if any.
        Read from another thread: ``current_task`` is a dict lookup."""
        return _job_of(asyncio.current_task(self.loop))

    def blocked_by(self, ctx: JobContext) -> bool:
        """Whether job ``ctx`` (its task or one of its tasks) has held the loop for more than
        :data:`STALL` seconds."""
        return self.stalled() and self.holder() is ctx

    def close(self, timeout: float = CLOSE_TIMEOUT) -> None:
        """As ``asyncio.run`` ends: in the loop's thread, cancel every task and wait up to
        ``timeout`` seconds for them (their ``finally`` blocks run), close the async generators
        and the default executor; then stop and close the loop. A coroutine that blocks the loop
        leaves it be (the loop is not closed); one that swallows its cancel is dropped."""
        if self.loop.is_closed():
            return
        self._closing = True
        if self.thread.is_alive():
            try:
                self.loop.call_soon_threadsafe(self._shutdown_soon, timeout)
            except RuntimeError:  # pragma: no cover - closed meanwhile
                return
            self.thread.join(timeout + 1.0)
            if self.thread.is_alive():
                _log.warning("Flask-LongTask's event loop is blocked by a coroutine: it is left unclosed.")
                return
        self.loop.close()

    def _shutdown_soon(self, timeout: float) -> None:
        self.loop.create_task(self._shutdown(timeout))

    async def _shutdown(self, timeout: float) -> None:
        try:
            me = asyncio.current_task()
            tasks = [task for task in asyncio.all_tasks() if task is not me]
            for task in tasks:
                task.cancel()
            if tasks:
                done, pending = await asyncio.wait(tasks, timeout=timeout)
                for task in done:
                    if not task.cancelled() and task.exception() is not None:
                        self.loop.call_exception_handler(
                            {"message": "unhandled exception at exit", "exception": task.exception(), "task": task}
                        )
                if pending:
                    _log.warning(
                        "%d coroutine(s) did not end within %g s of their cancel at exit: they are dropped.",
                        len(pending),
                        timeout,
                    )
            await self.loop.shutdown_asyncgens()
            try:
                await self.loop.shutdown_default_executor()
            except RuntimeError:  # (3.12 starts no thread at exit: the executor is shut down unwaited)
                pass
        finally:
            self.loop.stop()


_shared: tuple[int, Loop] | None = None
_shared_lock = threading.Lock()
#: Loops inherited through a fork: never closed here (closing one would unregister its
#: descriptors from an epoll set the parent shares), nor dropped (nor warned about).
_inherited: list[Loop] = []


def shared() -> Loop:
    """This process's loop, started at the first call (again in a forked child, or if its
    thread has ended)."""
    global _shared
    with _shared_lock:
        if _shared is None or _shared[0] != os.getpid() or not _shared[1].thread.is_alive():
            _shared = (os.getpid(), Loop())
        return _shared[1]


def _after_fork_in_child() -> None:
    global _shared, _shared_lock
    _shared_lock = threading.Lock()  # (a thread of the parent may have held it at the fork)
    if _shared is not None:
        _inherited.append(_shared[1])
    _shared = None


os.register_at_fork(after_in_child=_after_fork_in_child)


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
        self.coro: t.Any = None
        #: Set when the task ends, or a cancel is first seen: the job's thread looks then.
        self.woken = threading.Event()
        self.done = False
        self.value: t.Any = None
        self.error: BaseException | None = None

    def start(self, func: t.Callable[..., t.Any], args: t.Any, kwargs: t.Any) -> None:
        """In the loop's thread, in the job's context: make the coroutine and its task."""
        try:
            self.coro = func(*args, **kwargs)
            self.task = self.loop.loop.create_task(self._guarded(self.coro))
        except BaseException as exc:  # (the call itself raised: nothing was made)
            self.error, self.done = exc, True
            self.woken.set()
            return
        self.task.add_done_callback(self._ended)
        if self.ctx._cancelled:  # (seen before the task existed)
            self.task.cancel()

    async def _guarded(self, coro: t.Any) -> t.Any:
        """The job's coroutine, whose ``SystemExit``/``KeyboardInterrupt`` (which asyncio raises
        out of the loop, ending it) is handed to the job's thread instead, as any error is."""
        try:
            return await coro
        except (asyncio.CancelledError, GeneratorExit):
            raise
        except BaseException as exc:
            self.error = exc
            return None

    def _ended(self, task: asyncio.Task[t.Any]) -> None:
        try:
            value = task.result()
            if self.error is None:
                self.value = value
        except BaseException as exc:  # CancelledError
            self.error = exc
        if inspect.iscoroutine(self.coro) and inspect.getcoroutinestate(self.coro) == inspect.CORO_CREATED:
            self.coro.close()  # (cancelled before its first step: no "never awaited" warning)
        self.done = True
        self.woken.set()

    def cancel(self) -> None:
        """From the ticker's thread: deliver CancelledError at the coroutine's next await."""
        try:
            self.loop.loop.call_soon_threadsafe(self._cancel)
        except RuntimeError:  # pragma: no cover - the loop was closed (at exit)
            pass
        self.woken.set()

    def _cancel(self) -> None:
        if self.task is not None:
            self.task.cancel()

    def blocked(self) -> bool:
        return not self.done and self.loop.blocked_by(self.ctx)

    def settle(self, deadline: float) -> tuple[bool, JobContext | None]:
        """At the grace's end (``deadline``), the coroutine not ended: wait until the loop shows
        whether it turns (a pulse after the deadline) or is blocked (no pulse for
        :data:`STALL` seconds: a coroutine that began to block after the cancel counts too),
        or the coroutine ends. Returns whether the loop is blocked, and by which job."""
        while not self.done:
            if self.loop.pulse >= deadline:
                return False, None
            if self.loop.stalled():
                return True, self.loop.holder()
            self.woken.wait(PULSE / 4)
        return False, None


def run_job(ctx: JobContext, func: t.Callable[..., t.Any], args: t.Any, kwargs: t.Any, grace: float) -> t.Any:
    """In a job's thread: run ``func(*args, **kwargs)`` on this process's loop and return its
    value (or raise its error, ``SystemExit`` too). A cancel of the job reaches the coroutine as
    CancelledError; it then ends with ``None``, cancelled (:func:`~flask_longtask.ending.outcome`
    says so). One still running at the grace's end is left to itself (:data:`on_stuck` first):
    ``ctx._abandoned`` says so, and the job is not retried."""
    loop = shared()
    running = _Running(loop, ctx)
    context = contextvars.copy_context()  # current_job and the app context, as this thread has them
    loop.loop.call_soon_threadsafe(running.start, func, args, kwargs, context=context)
    ctx._blocked = running.blocked
    ctx._on_cancel = running.cancel
    if ctx._cancelled:
        running.cancel()
    deadline: float | None = None
    while not running.done:
        timeout = None if deadline is None else deadline - time.monotonic()
        if timeout is not None and timeout <= 0:
            break  # the grace is over
        running.woken.wait(timeout)
        running.woken.clear()
        if deadline is None and ctx._cancelled:
            deadline = time.monotonic() + grace
    blocked, by = running.settle(t.cast(float, deadline)) if not running.done else (False, None)
    ctx._blocked = None
    if not running.done:  # it swallowed the CancelledError, or the loop is blocked
        what = "time limit" if ctx._limited else "cancel"
        if not blocked:
            why = "it went on, catching CancelledError"
        elif by is ctx:
            why = "it blocked the event loop"
        else:
            why = "the event loop was blocked" + ("" if by is None else f" by job {by.id}")
        ctx._abandoned = f"Its coroutine did not end within the grace of {grace:g} s ({why}): it was left running."
        if on_stuck is not None:
            on_stuck(f"a coroutine job ({ctx.id}) did not end within its {what}'s grace of {grace:g} s: {why}", blocked)
        _log.warning("Job %s: its coroutine did not end within %g s of its %s: %s.", ctx.id, grace, what, why)
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
