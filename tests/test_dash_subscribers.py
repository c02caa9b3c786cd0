"""The pages of a shared job (``dash_adapter._pages``), on a real backend, without a browser."""

from __future__ import annotations

import threading

import flask

from dash_adapter import _pages
from flask_longtask.backends import ThreadBackend
from flask_longtask.backends.base import MISSING


def page_of(end_id: str) -> str:
    with flask.Flask(__name__).test_request_context(f"/_dash-update-component?endId={end_id}"):
        return _pages.page_id()


def test_a_page_is_its_end_id() -> None:
    assert page_of("a~sig") == page_of("a~sig") != page_of("b~sig")
    assert _pages.page_id() == ""  # outside a request


def test_only_the_last_page_to_leave_cancels() -> None:
    backend = ThreadBackend(workers=1)
    try:
        a, b = page_of("a"), page_of("b")
        assert _pages.leave(backend, "plain", a, 60) is True  # never shared: its only page
        _pages.join(backend, "job", a, 60)
        _pages.join(backend, "job", b, 60)
        _pages.join(backend, "job", b, 60)  # (twice: once on the list)
        assert _pages.read(backend, "job", a) == (0, {"joined": [a, b], "left": []})
        assert _pages.leave(backend, "job", a, 60) is False  # b is still on it
        assert _pages.read(backend, "job", a)[1] == {"joined": [b], "left": [a]}
        _pages.join(backend, "job", a, 60)  # a comes back: on it again
        assert _pages.read(backend, "job", a)[1] == {"joined": [b, a], "left": []}
        assert _pages.leave(backend, "job", a, 60) is False
        assert _pages.leave(backend, "job", b, 60) is True  # the last one
        _pages.move_cursor(backend, "job", a, 7)
        assert _pages.read(backend, "job", a)[0] == 7 and _pages.read(backend, "job", b)[0] == 0
    finally:
        backend.close()


def test_the_lock_lets_one_request_in_at_a_time() -> None:
    backend = ThreadBackend(workers=1)
    inside, most, entered = [0], [0], threading.Barrier(8)

    def one() -> None:
        entered.wait(timeout=10)
        for _ in range(20):
            with _pages.locked(backend, "job"):
                inside[0] += 1
                most[0] = max(most[0], inside[0])
                inside[0] -= 1

    try:
        threads = [threading.Thread(target=one) for _ in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=30)
        assert most[0] == 1
        assert backend.get(_pages.LOCK_KEY.format(job="job")) is MISSING  # released
        with _pages.locked(backend, "job"):  # free again
            pass
    finally:
        backend.close()
