"""New jobs, as the core makes them before a backend stores them: their ids, their arguments
bound to the task's signature and serialised, their memo keys, the room the queue has for them,
how the dashboard shows their arguments, and the undoing of a batch that failed part way."""

from __future__ import annotations

import inspect
import logging
import reprlib
import secrets
import threading
import time
import typing as t

from . import memo, signals
from .attempts import time_limit_value
from .backends.base import Backend, JobRequest, NewJob
from .exceptions import QueueFullError

if t.TYPE_CHECKING:  # pragma: no cover
    from flask import Flask

    from .job import Job
    from .store import JobStore
    from .task import Task

_log = logging.getLogger(__name__)


class _JobIds:
    """Makes job ids: 32 hex digits, the time in milliseconds (12 digits), then 80 random bits.

    Time first, as in a UUIDv7: the ids of new jobs sort after those of older ones, so storage
    that keeps keys in order (the diskcache backend's SQLite table) writes each new job next to
    the newest ones, in a page already in memory, instead of into a random page of the table,
    and a listing's newest-first order is the ids' order. Within a process the ids only grow: one
    made in the same millisecond as the one before (or after the clock stepped back) takes that
    one's time, and its random part is the one before's plus a random step of up to 64 bits (as
    UUIDv7's "monotonic random" counter), so ids stay unguessable.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._last = (0, 0)  # (milliseconds, random part) of the last id made here

    def __call__(self) -> str:
        ms, rand = time.time_ns() // 1_000_000 & 0xFFFFFFFFFFFF, secrets.randbits(80)
        with self._lock:
            last_ms, last_rand = self._last
            if ms <= last_ms:
                ms, rand = last_ms, last_rand + 1 + secrets.randbits(64)
                if rand >> 80:  # (the random part overflows: on to the next millisecond)
                    ms, rand = ms + 1, secrets.randbits(79)
            self._last = (ms, rand)
        return f"{ms:012x}{rand:020x}"


_job_ids = _JobIds()


def new_job_id() -> str:
    """A new job's id: 32 hex digits, the time in milliseconds, then 80 random bits; each id
    made in a process sorts after the one before (see :class:`_JobIds`)."""
    return _job_ids()


#: How many jobs :meth:`Task.submit_many` stores at a time (one transaction on the default backend):
#: the memo keys of a batch's calls are taken just before their jobs are stored.
BATCH: t.Final = 200

_SHOWN = reprlib.Repr()
_SHOWN.maxstring = _SHOWN.maxother = 60
_SHOWN.maxlevel, _SHOWN.maxlist, _SHOWN.maxtuple, _SHOWN.maxdict = 2, 5, 5, 5
#: The longest a job's arguments are shown (the dashboard); the record keeps that much.
SHOWN_MAX: t.Final = 200


def shown(call: tuple[tuple[t.Any, ...], dict[str, t.Any]]) -> str:
    """A job's arguments as the dashboard shows them: ``1, 'a', key=[1, 2]``, each value's repr
    cut short (``reprlib``), the whole at most :data:`SHOWN_MAX` characters."""
    args, kwargs = call
    try:
        text = ", ".join([*(_SHOWN.repr(a) for a in args), *(f"{k}={_SHOWN.repr(v)}" for k, v in kwargs.items())])
    except Exception:  # (a __repr__ that raises)
        return "<arguments that cannot be shown>"
    return text if len(text) <= SHOWN_MAX else text[: SHOWN_MAX - 3] + "..."


def bind(
    task: Task[..., t.Any], backend: Backend, args: tuple[t.Any, ...], kwargs: dict[str, t.Any], item: int | None = None
) -> tuple[inspect.BoundArguments, tuple[tuple[t.Any, ...], dict[str, t.Any]], bytes]:
    """A call's arguments bound to the task's signature (defaults applied), as a call, and
    serialised; ``TypeError`` if they do not fit or cannot be serialised (``item``: the call's
    place in :meth:`Task.submit_many`, named in the error)."""
    where = "" if item is None else f" (item {item} of submit_many)"
    try:
        bound = task.signature.bind(*args, **kwargs)
    except TypeError as exc:
        raise TypeError(f"{task.name}(){where}: {exc}") from None
    bound.apply_defaults()
    call = (bound.args, bound.kwargs)
    try:
        payload = backend.dumps(call)
    except Exception as exc:
        raise unserialisable(task, backend, bound.arguments, where) from exc
    return bound, call, payload


def memo_key(task: Task[..., t.Any], store: JobStore, bound: inspect.BoundArguments, values: list[t.Any]) -> str:
    return memo.make_key(task.name, bound, values, store.memo_generation(task.name), task.cache_ignore)


def check_room(app: Flask, backend: Backend, adding: int) -> None:
    """``QueueFullError`` if ``adding`` more jobs would pass ``LONGTASK_MAX_QUEUED``."""
    limit = app.config["LONGTASK_MAX_QUEUED"]
    if limit is not None and adding:
        queued = backend.queue_length()
        if queued is not None and queued + adding > limit:
            raise QueueFullError(queued, limit, adding)


def new_job(
    app: Flask,
    store: JobStore,
    task: Task[..., t.Any],
    job: Job[t.Any],
    call: tuple[tuple[t.Any, ...], dict[str, t.Any]],
    payload: bytes,
    memo_key: str | None,
    owner: str | None,
) -> NewJob:
    arguments = {"task": task.name, "module": task._module, "app": app.import_name, "args": payload}
    if task._script is not None:  # (a task of the script run as __main__: whose job it is)
        arguments["script"] = task._script
    return store.new_job(
        JobRequest(job.id, task.name, task, app),
        arguments,
        memo_key,
        owner,
        announce=lambda: signals.send(signals.job_submitted, app, job=job),
        time_limit=store.time_limit if task.time_limit is None else time_limit_value(task.time_limit, ""),
        retries=task.retries,
        shown=shown(call),
    )


def undo(store: JobStore, made: list[tuple[str, str | None]], queued: int) -> None:
    """After a batch failed part way: cancel the jobs that were queued (the first ``queued``
    of ``made``; those that ended meanwhile keep their end), and remove the others, as a
    failed submit() removes its job."""
    for n, (job_id, memo_key) in enumerate(made):
        try:
            if n < queued:
                store.job(job_id).cancel()
            else:
                store.discard(job_id, memo_key)
        except Exception:  # (storage may be what failed: the first error is the one to raise)
            _log.exception("Could not undo job %s of a submit_many that failed.", job_id)


def unserialisable(
    task: Task[..., t.Any], backend: Backend, arguments: t.Mapping[str, t.Any], where: str = ""
) -> TypeError:
    for name, value in arguments.items():
        try:
            backend.dumps(value)
        except Exception as exc:
            return TypeError(
                f"Argument {name!r} of task {task.name!r}{where} cannot be serialised by"
                f" {type(backend).__name__}: {exc}. Nothing was queued."
            )
    return TypeError(f"The arguments of task {task.name!r}{where} cannot be serialised by {type(backend).__name__}.")
