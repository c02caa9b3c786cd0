"""``long_callback``: dash-labs' decorator, as a thin layer over :class:`LongTaskManager`."""

from __future__ import annotations

import typing as t

from dash import Output

from .manager import LongTaskManager

if t.TYPE_CHECKING:  # pragma: no cover
    import dash

F = t.TypeVar("F", bound=t.Callable[..., t.Any])


def long_callback(
    app: dash.Dash,
    output: t.Any,
    args: t.Any,
    *,
    running: t.Sequence[tuple[Output, t.Any, t.Any]] | None = None,
    cancel: t.Any = None,
    progress: t.Any = None,
    progress_default: t.Any = None,
    interval: int = 1000,
    cache_by: t.Sequence[t.Callable[[], t.Any]] | None = None,
    expire: float | None = None,
    manager: LongTaskManager | None = None,
    prevent_initial_call: bool | None = None,
    on_error: t.Callable[[Exception], t.Any] | None = None,
) -> t.Callable[[F], F]:
    """Register a long-running callback, as dash-labs' ``@app.long_callback`` did.

    The arguments keep dash-labs' names and meanings; the callback is a Dash 4 background
    callback (``background=True``) run by a :class:`LongTaskManager`. When ``progress`` is
    given, the function gets ``set_progress`` as its first argument.

    .. code-block:: python

        @long_callback(app, output=Output("p", "children"), args=Input("go", "n_clicks"),
                       running=[(Output("go", "disabled"), True, False)])
        def callback(n_clicks):
            ...

    :param app: the Dash app.
    :param output: an ``Output``, or a grouping (list, tuple, dict) of them.
    :param args: an ``Input``/``State``, or a grouping of them; the function's arguments.
    :param running: ``(Output, value while running, value when done)`` triples.
    :param cancel: ``Input``\\ s whose change cancels the running job.
    :param progress: the ``Output``\\ s that ``set_progress`` updates. dash-labs' shorthand
        ``Output("bar", ("value", "max"))`` (several properties of one component) is accepted.
    :param progress_default: the progress outputs' values when no job runs.
    :param interval: milliseconds between the browser's polls.
    :param cache_by: memoize this callback: zero-argument functions whose values join the
        arguments in the memo key (this callback gets its own manager).
    :param expire: seconds a memoized result is reused.
    :param manager: the manager to use; default the app's ``background_callback_manager``.
    :param prevent_initial_call: as in ``app.callback``.
    :param on_error: as in ``app.callback``: called with the exception of a failed job.
    :raises TypeError: no :class:`LongTaskManager` to run the callback.
    """
    base = manager if manager is not None else getattr(app, "_background_manager", None)
    if not isinstance(base, LongTaskManager):
        raise TypeError(
            "long_callback needs a LongTaskManager: pass 'manager=' or create the app with"
            " 'dash.Dash(__name__, background_callback_manager=LongTaskManager(longtask))'."
        )
    if cache_by is not None or expire is not None:
        base = LongTaskManager(
            base.longtask,
            cache_by=cache_by if cache_by is not None else base.cache_by,
            expire=expire if expire is not None else base.expire,
        )
    options: dict[str, t.Any] = {
        "output": output,
        "inputs": args,
        "background": True,
        "manager": base,
        "interval": interval,
    }
    if running:
        options["running"] = list(running)
    if cancel:
        options["cancel"] = cancel
    if progress:
        options["progress"] = _expand(progress)
    if progress_default is not None:
        options["progress_default"] = progress_default
    if prevent_initial_call is not None:
        options["prevent_initial_call"] = prevent_initial_call
    if on_error is not None:
        options["on_error"] = on_error
    return t.cast("t.Callable[[F], F]", app.callback(**options))


def _expand(progress: t.Any) -> t.Any:
    """dash-labs' ``Output(id, (prop, prop))`` as the list of Outputs Dash 4 expects."""
    items = progress if isinstance(progress, (list, tuple)) else [progress]
    expanded: list[t.Any] = []
    for item in items:
        prop = getattr(item, "component_property", None)
        if isinstance(item, Output) and isinstance(prop, (list, tuple)):
            expanded.extend(Output(item.component_id, p) for p in prop)
        else:
            expanded.append(item)
    if len(expanded) == 1 and not isinstance(progress, (list, tuple)):
        return expanded[0]
    return expanded
