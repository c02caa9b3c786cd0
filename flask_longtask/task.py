"""Tasks: functions registered with :meth:`LongTask.task <flask_longtask.LongTask.task>`."""

from __future__ import annotations

import functools
import importlib
import inspect
import os
import sys
import typing as t

from .attempts import MAX_RETRIES, time_limit_value
from .coroutines import is_coroutine_task
from .worker import run_inline

if t.TYPE_CHECKING:  # pragma: no cover
    from .extension import LongTask
    from .job import Job

P = t.ParamSpec("P")
R = t.TypeVar("R")

# Every task defined in this process, by name: how a worker process finds the function of a job.
_registry: dict[str, Task[..., t.Any]] = {}


class Task(t.Generic[P, R]):
    """A function that can run as a job. Call it to run it inline; :meth:`submit` to queue it."""

    def __init__(
        self,
        longtask: LongTask,
        func: t.Callable[P, R],
        *,
        name: str | None = None,
        cache_by: t.Sequence[t.Callable[[], t.Any]] | None = None,
        expire: float | None = None,
        http: bool = False,
        cache_ignore: t.Iterable[str] = (),
        time_limit: float | None = None,
        retries: int = 0,
        retry_backoff: float = 1.0,
        retry_on: type[BaseException] | t.Iterable[type[BaseException]] = (Exception,),
    ) -> None:
        if not callable(func):
            raise TypeError(f"@longtask.task needs a function, got {func!r}.")
        if cache_by is not None and not all(callable(f) for f in cache_by):
            raise TypeError("'cache_by' must be a list of zero-argument callables.")
        #: The extension this task belongs to.
        self.longtask = longtask
        #: The undecorated function.
        self.func = func
        module = _module_name(func.__module__)
        #: The task's name, unique in the app: ``module.qualname`` unless given.
        self.name: str = name or f"{module}.{func.__qualname__}"
        #: ``None`` (no memoization), or zero-argument callables whose values join the memo key.
        self.cache_by: tuple[t.Callable[[], t.Any], ...] | None = None if cache_by is None else tuple(cache_by)
        #: Seconds a memoized result is reused; ``None`` means ``LONGTASK_RESULT_EXPIRE``.
        self.expire = expire
        #: Whether the HTTP API may submit this task (see :meth:`LongTask.blueprint`).
        self.http = http
        self.signature = inspect.signature(func)
        #: Whether it is a coroutine function (``async def``): its jobs run on an event loop
        #: (see ``docs/async.md``). Decided here, and kept in each job's record.
        self.is_coroutine = is_coroutine_task(func)
        #: Parameters passed to the job but left out of the memo key.
        self.cache_ignore = frozenset(cache_ignore)
        unknown = self.cache_ignore - set(self.signature.parameters)
        if unknown:
            raise ValueError(f"cache_ignore names {sorted(unknown)} that {func.__qualname__}() does not have.")
        #: Seconds a job of this task may run once started; ``None``: ``LONGTASK_TIME_LIMIT``.
        #: ``math.inf``: no limit, whatever the app's default.
        self.time_limit = time_limit
        if time_limit is not None:
            time_limit_value(time_limit, f"time_limit of task {self.name!r}")  # (raises if wrong)
        #: How many more times a job may run after an attempt that raised one of :attr:`retry_on`.
        self.retries = _count(retries, f"retries of task {self.name!r}")
        #: Seconds before the first retry; each next one waits twice as long (with jitter).
        self.retry_backoff = _seconds(retry_backoff, f"retry_backoff of task {self.name!r}")
        #: The exception types an attempt may fail with and be retried (``TimeLimitExceeded``
        #: among them: a job stopped at its time limit is retried too).
        self.retry_on = _exception_types(retry_on, f"retry_on of task {self.name!r}")
        self._module = module
        #: The script that defines it, when it runs as ``__main__`` (``python app.py``): recorded
        #: with each job, so that a worker of another script does not import this one.
        self._script = _script_of(func.__module__)
        functools.update_wrapper(self, func)
        _registry[self.name] = self
        longtask._tasks[self.name] = self

    def __repr__(self) -> str:
        return f"<Task {self.name}>"

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R:
        """Run the function here, now, as a plain call (``current_job`` is a stand-in). An
        ``async def`` task runs to its end on a new event loop and returns its value; called
        inside a running loop it raises ``RuntimeError`` (await ``task.func(...)`` there)."""
        return t.cast(R, run_inline(self.func, args, kwargs))

    def submit(self, *args: P.args, **kwargs: P.kwargs) -> Job[R]:
        """Queue a job that runs this task with these arguments, and return at once.

        Needs an app context of an app registered with the task's :class:`LongTask`.
        A memoized task (``cache_by`` given) may return an existing job instead: a succeeded one
        for the same key, or the one already queued or running for it (single-flight).

        :raises TypeError: the arguments do not fit the signature, or one cannot be serialised
            by the backend (nothing is queued).
        """
        return self.longtask._submit(self, args, kwargs)

    def submit_many(self, *iterables: t.Iterable[t.Any]) -> list[Job[R]]:
        """Queue a job for each set of arguments, taken from ``iterables`` as :func:`map` takes
        them, and return the jobs in that order: ``square.submit_many(range(3))`` submits
        ``square(0)``, ``square(1)`` and ``square(2)``; ``add.submit_many(xs, ys)`` submits
        ``add(x, y)`` for each pair. The iterables must have the same length.

        The same as calling :meth:`submit` for each, but every call is checked before any job is
        queued, and the backend stores and queues them together: on the default backend, one
        transaction per 200 jobs (much faster than one submit each). A memoized task returns
        the existing job for a call whose result or run it already has, and one job for calls
        that are the same within the batch (with the ``cache_hit`` signals :meth:`submit`
        sends). If the backend fails part way, the jobs it had queued are cancelled, the others
        removed, and the error is raised.

        :raises TypeError: a call does not fit the signature, or its arguments cannot be
            serialised (the error names the call's place); nothing is queued.
        :raises ValueError: the iterables have different lengths; nothing is queued.
        :raises QueueFullError: the new jobs would pass ``LONGTASK_MAX_QUEUED`` (each counts,
            even one a free worker would take at once); nothing is queued.
        """
        if not iterables:
            raise TypeError(f"{self.name}.submit_many() needs at least one iterable of arguments.")
        try:
            calls = list(zip(*iterables, strict=True))
        except ValueError:
            raise ValueError(f"{self.name}.submit_many(): the iterables have different lengths.") from None
        return self.longtask._submit_many(self, calls)

    @property
    def is_memoized(self) -> bool:
        return self.cache_by is not None

    def __reduce__(self) -> tuple[t.Any, ...]:
        return (lookup_task, (self.name, self._module))


def _count(value: t.Any, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{where} must be a whole number, 0 or more, not {value!r}.")
    if not 0 <= value <= MAX_RETRIES:
        raise ValueError(f"{where} must be a whole number from 0 to {MAX_RETRIES}, not {value!r}.")
    return value


def _seconds(value: t.Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{where} must be a number of seconds, 0 or more, not {value!r}.")
    if not 0 <= value < 1e9:  # (NaN, infinity and absurd values too)
        raise ValueError(f"{where} must be a number of seconds, 0 or more, not {value!r}.")
    return float(value)


def _exception_types(value: t.Any, where: str) -> tuple[type[BaseException], ...]:
    types = (value,) if isinstance(value, type) else tuple(value)
    if not types or not all(isinstance(c, type) and issubclass(c, BaseException) for c in types):
        raise TypeError(f"{where} must be an exception class or a tuple of them, not {value!r}.")
    return types


def _module_name(module: str) -> str:
    """The importable name of a module: a script run as ``__main__`` is named after its file.

    So ``python app.py`` names its tasks ``app.f``, exactly as a worker that imports ``app``
    (Celery, ``flask longtask worker``, a spawned pool process) names them.
    """
    if module not in ("__main__", "__mp_main__"):
        return module
    main = sys.modules.get(module)
    spec = getattr(main, "__spec__", None)
    if spec is not None and spec.name not in ("__main__", "__mp_main__"):
        return str(spec.name)
    path = getattr(main, "__file__", None)
    return os.path.splitext(os.path.basename(path))[0] if path else module


def _script_of(module: str) -> str | None:
    """The file of module ``module`` when it is the script this process runs (``__main__``)."""
    path = getattr(sys.modules.get(module), "__file__", None) if module in ("__main__", "__mp_main__") else None
    return os.path.abspath(path) if isinstance(path, str) else None


def _foreign(script: t.Any) -> bool:
    """Whether a job whose task is defined in ``script`` (run as ``__main__`` where it was
    submitted) is a stranger's here: this process runs another script, whose own tasks are
    registered (a pool worker started for ``python other.py``, which imported that script
    again). Importing ``script`` by name would run its code at import in this worker."""
    main = _script_of("__main__")
    if not isinstance(script, str) or main is None or _same_file(main, script):
        return False
    return any(task._script is not None for task in _registry.values())


def _same_file(a: str, b: str) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return os.path.abspath(a) == os.path.abspath(b)


def registered_task(name: t.Any) -> Task[..., t.Any] | None:
    """The task registered under ``name`` in this process, if any (nothing is imported)."""
    return _registry.get(name) if isinstance(name, str) else None


def lookup_task(name: str, module: str | None = None, script: str | None = None) -> Task[..., t.Any]:
    """The task registered under ``name`` in this process, importing ``module`` if needed; not
    when it is defined in ``script``, another script than this process's (see :func:`_foreign`)."""
    if name not in _registry and _foreign(script):
        raise LookupError(
            f"Task {name!r} belongs to the script {script} (its job was submitted by 'python"
            f" {os.path.basename(t.cast(str, script))}'), not to the script this worker pool was started for"
            f" ({_script_of('__main__')}): the job fails here rather than import another script. To keep"
            " scripts apart, give each its own LONGTASK_DISKCACHE_DIR."
        )
    if name not in _registry and module:
        try:
            importlib.import_module(module)
        except ImportError as exc:
            raise LookupError(
                f"Task {name!r} cannot be found in this worker process: importing its module {module!r}"
                f" failed ({exc}). Start workers where your app's modules are importable."
            ) from exc
    try:
        return _registry[name]
    except KeyError:
        raise LookupError(
            f"No task named {name!r} in this process (module {module!r}). Define tasks at module level"
            " in a module the worker imports."
        ) from None
