"""The memoization key: the task, its arguments normalised against the signature, and cache_by."""

from __future__ import annotations

import hashlib
import inspect
import pickle
import typing as t


def _encode(value: t.Any, out: list[bytes]) -> None:
    # A canonical, deterministic encoding: equal values give equal bytes in every process, and
    # dict/set order does not matter. (pickle is not canonical: its memo depends on identity.)
    kind = type(value)
    if value is None or kind in (bool, int, float, complex, str, bytes):
        out.append(f"{kind.__name__}:{value!r};".encode())
    elif kind in (list, tuple):
        out.append(f"{kind.__name__}[{len(value)}]".encode())
        for item in value:
            _encode(item, out)
    elif kind is dict:
        items = sorted(((_digest(k), v) for k, v in value.items()), key=lambda kv: kv[0])
        out.append(f"dict[{len(items)}]".encode())
        for digest, v in items:
            out.append(digest)
            _encode(v, out)
    elif kind in (set, frozenset):
        out.append(f"{kind.__name__}[{len(value)}]".encode())
        out.extend(sorted(_digest(item) for item in value))
    else:
        try:
            data = pickle.dumps(value, protocol=4)
        except Exception as exc:
            raise TypeError(f"Cannot make a memo key from a {kind.__qualname__} value: {exc}") from exc
        out.append(f"{kind.__module__}.{kind.__qualname__}:".encode() + data)


def _digest(value: t.Any) -> bytes:
    out: list[bytes] = []
    _encode(value, out)
    return hashlib.sha256(b"".join(out)).digest()


def make_key(
    task_name: str,
    bound: inspect.BoundArguments,
    cache_by: t.Sequence[t.Any],
    generation: t.Any,
    ignore: t.Collection[str] = (),
) -> str:
    """A stable hex key for one call of a task.

    ``bound`` must have had ``apply_defaults()`` applied, so ``f(1)`` and ``f(1, b=2)`` with a
    default ``b=2`` share a key, and keyword order never matters. Parameters named in
    ``ignore`` do not count.

    >>> def f(a, b=2, **kw): ...
    >>> sig = inspect.signature(f)
    >>> def key(*a, **k):
    ...     bound = sig.bind(*a, **k)
    ...     bound.apply_defaults()
    ...     return make_key("f", bound, [], None)
    >>> key(1) == key(a=1, b=2) == key(1, 2)
    True
    >>> key(1, x=1, y=2) == key(1, y=2, x=1)
    True
    >>> key(1) == key(2)
    False
    """
    arguments = [(name, value) for name, value in bound.arguments.items() if name not in ignore]
    return _digest([task_name, generation, arguments, list(cache_by)]).hex()
