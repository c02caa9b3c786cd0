"""The tagged JSON that carries values through Redis and Celery: every documented type round-trips."""

from __future__ import annotations

import datetime as dt
import decimal
import uuid

import pytest

from flask_longtask.backends import _json


@pytest.mark.parametrize(
    "value",
    [
        None,
        True,
        3,
        2.5,
        "text",
        [1, [2, 3]],
        {"a": {"b": [1]}},
        (1, (2, "x")),
        b"\x00\xffbytes",
        bytearray(b"ab"),
        {1, 2},
        frozenset({"a"}),
        {(1, 2): "tuple key", 3: "int key"},
        {"__lt__": "a user key that looks like our tag"},
        dt.datetime(2024, 1, 2, 3, 4, 5, 6),
        dt.datetime(2024, 1, 2, tzinfo=dt.timezone.utc),
        dt.date(2024, 1, 2),
        dt.time(3, 4, 5),
        dt.timedelta(days=1, seconds=2.5),
        decimal.Decimal("1.10"),
        uuid.UUID(int=7),
    ],
)
def test_round_trip(value):
    back = _json.loads(_json.dumps(value))
    assert back == (bytes(value) if isinstance(value, bytearray) else value)
    assert type(back) is (bytes if isinstance(value, bytearray) else type(value))


def test_numpy_arrays_and_scalars():
    numpy = pytest.importorskip("numpy")
    array = numpy.arange(12, dtype="float32").reshape(3, 4)
    back = _json.loads(_json.dumps(array))
    assert back.dtype == array.dtype and back.shape == (3, 4) and (back == array).all()
    objects = numpy.array([{"a": 1}, None], dtype=object)
    assert list(_json.loads(_json.dumps(objects))) == [{"a": 1}, None]
    assert _json.loads(_json.dumps(numpy.int64(5))) == 5


def test_plotly_figures():
    go = pytest.importorskip("plotly.graph_objects")
    figure = go.Figure(data=[go.Bar(x=[1, 2], y=[3, 4])])
    back = _json.loads(_json.dumps(figure))
    assert isinstance(back, go.Figure) and back.to_plotly_json() == figure.to_plotly_json()


def test_what_json_cannot_carry_is_refused_by_name():
    class Custom:
        pass

    with pytest.raises(TypeError, match="'test_what_json_cannot_carry_is_refused_by_name.<locals>.Custom'"):
        _json.dumps({"nested": [Custom()]})


def test_an_unknown_tag_is_an_error():
    with pytest.raises(ValueError, match="Unknown tagged JSON type 'alien'"):
        _json.loads(b'{"__lt__": "alien", "v": 1}')
