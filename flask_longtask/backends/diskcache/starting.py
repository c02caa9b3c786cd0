"""A pool worker's start, while it imports the user's script again.

A worker process is started as ``multiprocess``'s ``forkserver`` and ``spawn`` start any process:
before it runs its target (:func:`.child.worker_main`) it imports the script that started the
host's process again, as ``__mp_main__`` (so that functions pickled by reference to
``__main__`` are found). A script whose code runs at import, not under
``if __name__ == "__main__":``, runs it in every worker: a ``submit()`` there would queue a job
that waits for a worker that is itself waiting for it, and an ``app.run()`` would serve the app
(or fail, "port in use"). Both raise :class:`RuntimeError` here instead, at once, with the fix,
as ``multiprocessing`` does when such a script starts a process.

Until its target runs, the worker has no pipe to the host: whatever makes it fail while it
imports the script (that error, or any other) is sent through the FIFO of each diskcache
directory the script opened, as :class:`.wire.StartFailed`, from ``sys.excepthook``, which the
start method calls before the process exits. The host fails the job it had sent that worker
with it (see :mod:`.recovery`). ``docs/internals.md`` ("A worker that fails as it starts").
"""

from __future__ import annotations

import os
import sys
import threading
import types
import typing as t

from . import wire
from .fifo import FIFO_NAME

if t.TYPE_CHECKING:  # pragma: no cover
    from flask import Flask

GUARD = (
    "put the code that submits jobs, serves the app (app.run()) or waits for jobs under"
    " 'if __name__ == \"__main__\":', as with multiprocessing"
)

#: The directories the script opened while this process bootstraps (told of a failure).
_directories: set[str] = set()
_lock = threading.Lock()
_previous_hook: t.Any = None


def bootstrapping() -> bool:
    """Whether this process is a worker (of ``multiprocess`` or ``multiprocessing``) that has
    not finished starting: it is importing the main script again."""
    for name in ("multiprocess.process", "multiprocessing.process"):
        module = sys.modules.get(name)
        if module is not None and getattr(module.current_process(), "_inheriting", False):
            return True
    return False


def refusal(what: str) -> RuntimeError:
    return RuntimeError(
        f"An attempt has been made to {what} before the current process has finished its bootstrapping"
        " phase. This process is a worker of the job pool: it imports your script again as it starts,"
        " and your script does that at import time. To fix it, " + GUARD + "."
    )


def refuse_submit() -> None:
    """Raise :class:`RuntimeError` when a job is submitted by a worker importing the script."""
    if bootstrapping():
        raise refusal("submit a job")


def guard_run(app: Flask) -> None:
    """In a worker importing the script: make ``app.run()`` raise instead of serving the app."""
    if not bootstrapping():
        return
    run = app.run

    def refused_run(*args: t.Any, **kwargs: t.Any) -> None:
        if bootstrapping():
            raise refusal("serve the app (app.run())")
        run(*args, **kwargs)

    app.run = refused_run  # type: ignore[method-assign]


def watch(directory: str) -> None:
    """In a worker importing the script: if that fails, tell the host of ``directory``."""
    global _previous_hook
    if not bootstrapping():
        return
    with _lock:
        _directories.add(directory)
        if _previous_hook is None:
            _previous_hook, sys.excepthook = sys.excepthook, _report


def started() -> None:
    """The worker has started (its target runs): failures are its jobs' from now on."""
    global _previous_hook
    with _lock:
        _directories.clear()
        if _previous_hook is not None and sys.excepthook is _report:
            sys.excepthook = _previous_hook
        _previous_hook = None


def _report(kind: type[BaseException], exc: BaseException, tb: types.TracebackType | None) -> None:
    # (Not bootstrapping() any more: the start method has unwound its "inheriting" state by now.
    # Until started() clears them, the directories say that it never started.)
    try:
        if _directories:
            line = wire.StartFailed(os.getpid(), {"type": kind.__name__, "message": str(exc)}).encode()
            for directory in list(_directories):
                send(directory, line)
    finally:
        (_previous_hook or sys.__excepthook__)(kind, exc, tb)


def send(directory: str, line: bytes) -> bool:
    """Write one line to the FIFO of ``directory``'s host, if one listens; whether it did."""
    try:
        fd = os.open(os.path.join(directory, FIFO_NAME), os.O_WRONLY | os.O_NONBLOCK)
    except OSError:
        return False
    try:
        return os.write(fd, line) == len(line)
    except OSError:
        return False
    finally:
        os.close(fd)
