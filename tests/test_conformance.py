from __future__ import annotations

import pytest

from flask_longtask.backends import ThreadBackend
from flask_longtask.testing import BackendConformance


class TestThreadBackend(BackendConformance):
    @pytest.fixture
    def backend(self):
        backend = ThreadBackend(workers=2)
        yield backend
        backend.close()
