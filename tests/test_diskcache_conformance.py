"""DiskcacheBackend passes the backend conformance suite, with a real pool of worker processes."""

from __future__ import annotations

import typing as t
from pathlib import Path

import pytest

from flask_longtask.backends.diskcache import DiskcacheBackend
from flask_longtask.testing import BackendConformance


class TestDiskcacheConformance(BackendConformance):
    stops_stubborn_coroutines = True

    @pytest.fixture
    def backend(self, tmp_path: Path) -> t.Iterator[DiskcacheBackend]:
        backend = DiskcacheBackend(tmp_path / "lt", workers=2, max_workers=2)
        yield backend
        backend.close()
