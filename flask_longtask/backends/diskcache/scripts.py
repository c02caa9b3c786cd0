"""Scripts run as ``__main__``, and the pool: which script the host runs, and whether a
function of ``__main__`` passed to a job can be found by the workers.

A worker imports the script of its host's process again, as ``__mp_main__`` (see
:mod:`.starting`), so a function of ``__main__`` pickled by reference (``__main__.name``) is found
there when the host runs that same script and the script defines ``name`` at import: at module
level, not under ``if __name__ == "__main__":``. Nested functions and lambdas of ``__main__`` are
pickled by value (by dill), which a worker cannot load (``No module named '__builtin__'``). So
at submit, an argument that is, or holds, a function of ``__main__`` is checked, and one the
workers cannot find raises ``TypeError`` naming it. The check runs only when the pickled
arguments name ``__main__`` (a search of the bytes otherwise).

The host writes its process id and its script to ``pool.lock`` (``<pid>\\n<script>\\n``), read by
:func:`holder` (``flask longtask worker`` on standby says whose pool it waits for).
"""

from __future__ import annotations

import ast
import fcntl
import functools
import os
import pickle
import sys
import types
import typing as t

if t.TYPE_CHECKING:  # pragma: no cover
    from . import DiskcacheBackend

#: How many objects of an argument are looked at, at most, for functions of ``__main__``.
BUDGET = 10_000
_MAINS = ("__main__", "__mp_main__")


def dumps(value: t.Any, backend: DiskcacheBackend, in_worker: bool) -> bytes:
    """Pickle ``value``; values plain pickle refuses (lambdas, closures) go through dill. Outside a
    worker (where ``__main__`` is the script itself), an unusable function of ``__main__`` in it
    raises ``TypeError`` (:func:`check_arguments`)."""
    import dill

    try:
        data = pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
    except (pickle.PicklingError, TypeError, AttributeError):
        data = b""  # (dill would pickle a function of __main__ by value: no worker loads that)
    if not in_worker:
        check_arguments(value, data, backend)
    return data or t.cast(bytes, dill.dumps(value, protocol=pickle.HIGHEST_PROTOCOL))


def main_script() -> str | None:
    """The file of the script this process runs as ``__main__``, if it runs one."""
    path = getattr(sys.modules.get("__main__"), "__file__", None)
    return os.path.abspath(path) if isinstance(path, str) else None


def holder(directory: str) -> tuple[int, str | None] | None:
    """The process that hosts the pool of ``directory``, and its script, as it wrote them in
    ``pool.lock``; ``None`` when no process holds the lock (or it cannot be read)."""
    try:
        fd = os.open(os.path.join(directory, "pool.lock"), os.O_RDONLY)
    except OSError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:  # held: by the host
            lines = os.pread(fd, 8192, 0).decode(errors="replace").split("\n")
            pid = lines[0].strip()
            if not (pid.isascii() and pid.isdigit()):
                return None
            return int(pid), (lines[1].strip() or None) if len(lines) > 1 else None
        return None  # (ours for a moment: nobody hosts; closing the file lets go of it)
    except OSError:
        return None
    finally:
        os.close(fd)


def check_arguments(value: t.Any, data: bytes, backend: DiskcacheBackend) -> None:
    """Raise ``TypeError`` if ``value`` (pickled as ``data``, or not at all: ``b""``) is or holds
    a function of ``__main__`` that the pool's workers cannot find."""
    if data and b"__main__" not in data:
        return
    for func in _main_functions(value):
        why = _why_not_found(func, backend)
        if why is not None:
            raise TypeError(
                f"{func.__qualname__}() is a function of __main__ (the script {main_script()}), which the"
                f" worker processes cannot find: {why}. Define it at module level, outside"
                " 'if __name__ == \"__main__\":', or in a module of its own, or pass its name instead"
            )


def _main_functions(value: t.Any) -> t.Iterator[types.FunctionType]:
    """The functions of ``__main__`` in ``value``: itself, or held in lists, tuples, sets, dicts
    (keys and values) and ``functools.partial`` objects, looking at :data:`BUDGET` objects at most."""
    todo, budget = [value], BUDGET
    while todo and budget > 0:
        item = todo.pop()
        budget -= 1
        if isinstance(item, types.FunctionType):
            if item.__module__ in _MAINS:
                yield item
        elif isinstance(item, (list, tuple, set, frozenset)):
            todo.extend(item)
        elif isinstance(item, dict):
            todo.extend(item.keys())
            todo.extend(item.values())
        elif isinstance(item, functools.partial):
            todo.extend((item.func, item.args, item.keywords))
        elif isinstance(item, types.MethodType):
            todo.append(item.__func__)


def _why_not_found(func: types.FunctionType, backend: DiskcacheBackend) -> str | None:
    """Why the workers of ``backend``'s pool cannot find ``func``, a function of ``__main__``;
    ``None`` if they can (or that cannot be told)."""
    name = func.__qualname__
    if "<" in name:  # a lambda, or defined inside a function (<locals>)
        what = "a lambda" if func.__name__ == "<lambda>" else "it is defined inside a function"
        return f"{what}, so it can only be pickled by value, which a worker cannot load"
    main = sys.modules.get(func.__module__)
    if main is None or getattr(main, name.split(".")[0], None) is None:
        return "the script does not define it under that name"
    script = main_script()
    if script is not None and name.split(".")[0] not in _defined_at_import(script):
        return "it is defined under 'if __name__ == \"__main__\":', which the workers do not run"
    if backend.is_pool_host:
        return None
    hosted = holder(backend.directory)
    if hosted is not None and hosted[1] is not None and script is not None and hosted[1] != script:
        return f"the pool is hosted by process {hosted[0]}, which runs another script ({hosted[1]})"
    return None


def _defined_at_import(path: str) -> frozenset[str]:
    """The names ``path`` binds when it is imported (not run as ``__main__``); every name when
    it cannot be read (nothing is refused then)."""
    try:
        stat = os.stat(path)
        return _names(path, stat.st_mtime_ns, stat.st_size)
    except (OSError, SyntaxError, ValueError):
        return _EVERYTHING


class _Everything(frozenset[str]):
    def __contains__(self, item: object) -> bool:
        return True


_EVERYTHING = _Everything()


@functools.lru_cache(maxsize=8)
def _names(path: str, mtime: int, size: int) -> frozenset[str]:
    with open(path, "rb") as f:
        tree = ast.parse(f.read(), path)
    names: set[str] = set()

    def visit(body: list[ast.stmt]) -> None:
        for node in body:
            if isinstance(node, ast.If) and _is_main_guard(node.test):
                visit(node.orelse)
                continue
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                names.add(node.name)
            elif isinstance(node, (ast.Import, ast.ImportFrom)):
                names.update((alias.asname or alias.name).split(".")[0] for alias in node.names)
            else:
                for child in ast.walk(node):  # assignments (and walrus, for, with ... as)
                    if isinstance(child, ast.Name) and isinstance(child.ctx, ast.Store):
                        names.add(child.id)
            for field in ("body", "orelse", "finalbody"):
                inner = getattr(node, field, None)
                if isinstance(inner, list) and not isinstance(
                    node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)
                ):
                    visit(inner)
            for handler in getattr(node, "handlers", ()):
                visit(handler.body)

    visit(tree.body)
    return frozenset(names)


def _is_main_guard(test: ast.expr) -> bool:
    """``__name__ == "__main__"`` (either way round)."""
    if not (isinstance(test, ast.Compare) and len(test.ops) == 1 and isinstance(test.ops[0], ast.Eq)):
        return False
    sides = [test.left, test.comparators[0]]
    return any(isinstance(s, ast.Name) and s.id == "__name__" for s in sides) and any(
        isinstance(s, ast.Constant) and s.value == "__main__" for s in sides
    )
