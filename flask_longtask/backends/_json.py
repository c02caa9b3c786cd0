"""Tagged JSON: the encoder for values sent through Redis and Celery, where no pickle goes.

JSON alone cannot carry tuples, bytes, sets, datetimes, non-string dict keys, NumPy arrays or
Plotly figures; each is written as a one-key object whose key names the type, and read back as
that type. Anything else is refused with a ``TypeError`` that names its type.

>>> from datetime import date
>>> value = {"when": date(2024, 1, 2), "shape": (2, 3), 1: b"\\x00", "tags": {"a"}}
>>> loads(dumps(value)) == value
True
>>> dumps(object())  # doctest: +ELLIPSIS
Traceback (most recent call last):
...
TypeError: Cannot send a 'object' value as JSON: ...
"""

from __future__ import annotations

import base64
import datetime as dt
import decimal
import json
import typing as t
import uuid

_TAG = "__lt__"


def _encode(value: t.Any) -> t.Any:
    kind = type(value)
    if value is None or kind in (str, int, float, bool):
        return value
    if kind is list:
        return [_encode(v) for v in value]
    if kind is dict:
        if all(type(k) is str for k in value) and _TAG not in value:
            return {k: _encode(v) for k, v in value.items()}
        return {_TAG: "dict", "v": [[_encode(k), _encode(v)] for k, v in value.items()]}
    if kind is tuple:
        return {_TAG: "tuple", "v": [_encode(v) for v in value]}
    if kind in (set, frozenset):
        return {_TAG: kind.__name__, "v": [_encode(v) for v in value]}
    if kind in (bytes, bytearray):
        return {_TAG: "bytes", "v": base64.b64encode(value).decode()}
    if kind is dt.datetime:
        return {_TAG: "datetime", "v": value.isoformat()}
    if kind is dt.date:
        return {_TAG: "date", "v": value.isoformat()}
    if kind is dt.time:
        return {_TAG: "time", "v": value.isoformat()}
    if kind is dt.timedelta:
        return {_TAG: "timedelta", "v": value.total_seconds()}
    if kind is decimal.Decimal:
        return {_TAG: "decimal", "v": str(value)}
    if kind is uuid.UUID:
        return {_TAG: "uuid", "v": str(value)}
    module = kind.__module__
    if module == "numpy" and kind.__name__ == "ndarray":
        if value.dtype.hasobject:
            return {_TAG: "ndarray-list", "v": _encode(value.tolist())}
        data = base64.b64encode(value.tobytes()).decode()
        return {_TAG: "ndarray", "dtype": value.dtype.str, "shape": list(value.shape), "v": data}
    if module == "numpy" and hasattr(value, "item"):  # numpy scalars
        return _encode(value.item())
    if module.startswith("plotly.graph_objs") and hasattr(value, "to_plotly_json"):
        return {_TAG: "plotly", "type": kind.__name__, "v": _encode(value.to_plotly_json())}
    raise TypeError(
        f"Cannot send a {kind.__qualname__!r} value as JSON: convert it to plain data (str, int, float,"
        " bool, None, list, dict) or to a type in flask_longtask.backends._json."
    )


def _decode_tagged(obj: dict[str, t.Any]) -> t.Any:
    tag = obj.get(_TAG)
    if tag is None:
        return obj
    v = obj["v"]
    if tag == "tuple":
        return tuple(v)
    if tag == "dict":
        return {_hashable(k): val for k, val in v}
    if tag == "set":
        return {_hashable(x) for x in v}
    if tag == "frozenset":
        return frozenset(_hashable(x) for x in v)
    if tag == "bytes":
        return base64.b64decode(v)
    if tag == "datetime":
        return dt.datetime.fromisoformat(v)
    if tag == "date":
        return dt.date.fromisoformat(v)
    if tag == "time":
        return dt.time.fromisoformat(v)
    if tag == "timedelta":
        return dt.timedelta(seconds=v)
    if tag == "decimal":
        return decimal.Decimal(v)
    if tag == "uuid":
        return uuid.UUID(v)
    if tag == "ndarray":
        import numpy

        return numpy.frombuffer(base64.b64decode(v), dtype=numpy.dtype(obj["dtype"])).reshape(obj["shape"]).copy()
    if tag == "ndarray-list":
        import numpy

        return numpy.array(v, dtype=object)
    if tag == "plotly":
        from plotly import graph_objects

        return getattr(graph_objects, obj["type"])(v)
    raise ValueError(f"Unknown tagged JSON type {tag!r}.")


def _hashable(value: t.Any) -> t.Any:
    return tuple(_hashable(v) for v in value) if isinstance(value, list) else value


def dumps(value: t.Any) -> bytes:
    """Encode ``value`` as tagged JSON bytes.

    :raises TypeError: a value of a type it cannot carry.
    """
    return json.dumps(_encode(value), separators=(",", ":"), allow_nan=True).encode()


def loads(data: bytes) -> t.Any:
    """Decode tagged JSON bytes."""
    return json.loads(data, object_hook=_decode_tagged)
