"""What runs inside the job: a Dash callback called with Dash's context, progress and set_props.

This module is imported by the worker that runs the job (the web process for the thread
backend, a pool or Celery worker otherwise). Everything a job publishes -- the progress value
and every ``set_props`` call -- travels in one progress record, so the core's coalescing
("latest wins, last value never lost") never drops a ``set_props``: the record is cumulative.
Each report is numbered, the progress value with the number of its ``set_progress``, each prop
with that of its ``set_props``: a page is given what is numbered above its cursor (``_pages``).
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import threading
import typing as t

from dash._callback_context import context_value
from dash._utils import AttributeDict, to_json
from dash.exceptions import PreventUpdate

from flask_longtask import JobCancelledError, current_job

#: What a job stores for ``PreventUpdate``: Dash's own "no update" marker.
NO_UPDATE: dict[str, str] = {"_dash_no_update": "_dash_no_update"}

#: The context keys a job gets, as on Dash's managers: those derived from the callback's inputs,
#: then the request's (``REQUEST_KEYS``). None of them is in the memo key.
CONTEXT_KEYS = (
    "inputs_list",
    "states_list",
    "outputs_list",
    "input_values",
    "state_values",
    "triggered_inputs",
    "args_grouping",
    "using_args_grouping",
    "outputs_grouping",
    "using_outputs_grouping",
)
#: The request that starts a job, as Dash's managers pass it (its PR #3051): ``ctx.cookies``,
#: ``ctx.headers``, ``ctx.path``, ``ctx.remote``, ``ctx.origin``, ``ctx.args`` (a plain dict, as
#: on Dash's managers), and the ``custom_data`` of Dash's hooks.
REQUEST_KEYS = ("cookies", "headers", "path", "remote", "origin", "args", "custom_data")
_DEPENDENCY_KEYS = (
    "inputs_list",
    "states_list",
    "outputs_list",
    "args_grouping",
    "outputs_grouping",
)


class Published(t.TypedDict):
    """The progress record of a Dash job, as stored by the core."""

    #: ``[seq, value]``: the latest ``set_progress`` value as a list, one item per progress
    #: output, and the number of that call; or ``None`` before the first.
    progress: list[t.Any] | None
    #: Every ``set_props`` so far: ``{component id: {prop: [seq, value]}}``, latest value per prop.
    props: dict[str, dict[str, list[t.Any]]]
    #: The number of the latest report, ``set_progress`` or ``set_props`` (0 before the first).
    seq: int


def plain_json(value: t.Any) -> t.Any:
    """``value`` as the browser will get it: Dash's JSON (components, ``no_update``, numpy and
    pandas values as Dash sends them), back as plain data that every backend stores, as Dash's
    Celery manager does with results, progress and ``set_props``."""
    return json.loads(to_json(value))  # type: ignore[no-untyped-call]


def capture_context() -> dict[str, t.Any]:
    """The current Dash callback context, reduced to plain data for the job: what its inputs
    say, and the request's cookies, headers, path, remote address, origin and query arguments."""
    value = context_value.get()
    context = {key: _plain(value[key]) for key in CONTEXT_KEYS if key in value}
    for key in REQUEST_KEYS:
        if value.get(key) is not None:
            item = value[key]
            context[key] = _plain(dict(item) if key == "args" else item)  # (args: a MultiDict)
    return context


def _plain(value: t.Any) -> t.Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _attribute_dicts(value: t.Any) -> t.Any:
    # Dash's context gives dependencies as AttributeDicts (ctx.args_grouping.x.value); their
    # "value" is user data and stays as it was.
    if isinstance(value, dict):
        if "id" in value and "property" in value:
            return AttributeDict(value)
        return {k: _attribute_dicts(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_attribute_dicts(v) for v in value]
    return value


class _Publisher:
    """Keeps the job's cumulative record and hands a fresh copy to ``current_job``."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._record: Published = {"progress": None, "props": {}, "seq": 0}

    def _check_cancel(self) -> None:
        # Lets a cancelled job stop at its next progress report, even on backends that cannot
        # stop a running job by force (threads).
        if current_job.is_cancel_requested:
            raise JobCancelledError(current_job.id or "")

    def set_progress(self, value: t.Any) -> None:
        self._check_cancel()
        values = plain_json(list(value) if isinstance(value, (list, tuple)) else [value])
        with self._lock:
            # A new dict each time: the core may be serialising the previous one right now.
            seq = self._record["seq"] + 1
            self._record = {**self._record, "progress": [seq, values], "seq": seq}
            current_job.set_progress(self._record)

    def set_props(self, component_id: str, props: t.Mapping[str, t.Any]) -> None:
        self._check_cancel()
        values = plain_json(dict(props))
        with self._lock:
            seq = self._record["seq"] + 1
            merged = dict(self._record["props"].get(component_id, {}))
            merged.update({prop: [seq, value] for prop, value in values.items()})
            self._record = {
                **self._record,
                "props": {**self._record["props"], component_id: merged},
                "seq": seq,
            }
            current_job.set_progress(self._record)


class _PropsRecorder(dict):  # type: ignore[type-arg]
    """Dash's ``ctx.updated_props`` inside a job: each ``set_props`` call is published."""

    def __init__(self, publisher: _Publisher) -> None:
        super().__init__()
        self._publisher = publisher

    def __setitem__(self, key: str, value: t.Any) -> None:
        self._publisher.set_props(key, value)
        super().__setitem__(key, {**super().get(key, {}), **value})

    def get(self, key: str, default: t.Any = None) -> t.Any:
        # Dash merges a new set_props call into what get() returns before storing it; returning
        # nothing makes each call arrive alone, so only the props it names count as new.
        return default


def run_callback(
    fn: t.Callable[..., t.Any],
    has_progress: bool,
    args: t.Any,
    context: dict[str, t.Any],
) -> t.Any:
    """Call Dash callback ``fn`` as Dash's own managers do, inside the job.

    :param has_progress: pass ``set_progress`` as the first argument.
    :param args: the callback's arguments: a dict (keyword grouping), a list, or one value.
    :param context: from :func:`capture_context`, in the submitting request.
    """
    try:
        with _dash_context(context) as extra:
            output = _call(fn, extra if has_progress else [], args)
            if inspect.isawaitable(output):  # (a plain function that returns an awaitable)
                output = asyncio.run(_await(output))
    except PreventUpdate:
        return NO_UPDATE
    return plain_json(output)


async def run_async_callback(
    fn: t.Callable[..., t.Awaitable[t.Any]],
    has_progress: bool,
    args: t.Any,
    context: dict[str, t.Any],
) -> t.Any:
    """:func:`run_callback` for an ``async def`` callback, awaited in a coroutine job: on the
    worker's event loop, where a cancel reaches it as ``CancelledError`` at its next ``await``."""
    try:
        with _dash_context(context) as extra:
            output = await _call(fn, extra if has_progress else [], args)
    except PreventUpdate:
        return NO_UPDATE
    return plain_json(output)


@contextlib.contextmanager
def _dash_context(context: dict[str, t.Any]) -> t.Iterator[list[t.Callable[[t.Any], None]]]:
    """Dash's callback context for the job (its ``set_props`` published); gives ``[set_progress]``."""
    publisher = _Publisher()
    ctx = AttributeDict({key: _attribute_dicts(value) for key, value in context.items()})
    ctx.ignore_register_page = False
    if isinstance(ctx.get("custom_data"), dict):
        ctx.custom_data = AttributeDict(ctx.custom_data)  # (ctx.custom_data.<namespace>)
    ctx.updated_props = _PropsRecorder(publisher)
    token = context_value.set(ctx)
    try:
        yield [publisher.set_progress]
    finally:
        context_value.reset(token)


def _call(fn: t.Callable[..., t.Any], extra: list[t.Any], args: t.Any) -> t.Any:
    if isinstance(args, dict):
        return fn(*extra, **args)
    if isinstance(args, (list, tuple)):
        return fn(*extra, *args)
    return fn(*extra, args)


async def _await(awaitable: t.Awaitable[t.Any]) -> t.Any:
    return await awaitable


def split_args(args: t.Any, ignore: t.Collection[t.Any]) -> tuple[t.Any, dict[t.Any, t.Any]]:
    """``(the arguments that count in the memo key, the ignored ones by name or position)``."""
    if not ignore:
        return args, {}
    if isinstance(args, dict):
        return {k: v for k, v in args.items() if k not in ignore}, {k: v for k, v in args.items() if k in ignore}
    if isinstance(args, (list, tuple)):
        kept = [v for i, v in enumerate(args) if i not in ignore]
        return kept, {i: v for i, v in enumerate(args) if i in ignore}
    return args, {}


def join_args(kept: t.Any, ignored: dict[t.Any, t.Any]) -> t.Any:
    """Inverse of :func:`split_args`."""
    if not ignored:
        return kept
    if isinstance(kept, dict):
        return {**kept, **ignored}
    values = list(kept)
    for index in sorted(ignored):
        values.insert(index, ignored[index])
    return values


def make_job_function(fn: t.Callable[..., t.Any], has_progress: bool) -> t.Callable[..., t.Any]:
    """The function a Flask-LongTask task runs for Dash callback ``fn``.

    Its parameters split what identifies a request (``args`` without the ignored ones, and
    ``triggered`` unless Dash ignores it) from what only travels with it (``hidden``: the
    ignored arguments and the callback context), so the task can leave ``hidden`` out of the
    memo key exactly as Dash's ``cache_args_to_ignore`` and ``cache_ignore_triggered`` say.
    It carries ``fn``'s module and name, so a worker process finds it by importing that module.
    For an ``async def`` callback it is one too: its jobs are coroutine jobs (on the pool, a
    worker of coroutine jobs runs many at once; a cancel reaches the callback as
    ``CancelledError`` at its next ``await``, and its ``finally:`` blocks run).
    """

    run: t.Callable[..., t.Any]
    if inspect.iscoroutinefunction(fn):  # a coroutine job (see docs/async.md)

        async def run(args: t.Any, triggered: t.Any, hidden: dict[str, t.Any]) -> t.Any:
            return await run_async_callback(fn, has_progress, join_args(args, hidden["args"]), hidden["context"])

    else:

        def run(args: t.Any, triggered: t.Any, hidden: dict[str, t.Any]) -> t.Any:
            return run_callback(fn, has_progress, join_args(args, hidden["args"]), hidden["context"])

    run.__module__ = fn.__module__
    run.__name__ = getattr(fn, "__name__", "callback")
    run.__qualname__ = getattr(fn, "__qualname__", run.__name__)
    run.__doc__ = fn.__doc__
    return run
