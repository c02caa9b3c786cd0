"""Dash's background callbacks (and dash-labs' ``long_callback``) on Flask-LongTask."""

from __future__ import annotations

try:
    import dash  # noqa: F401
except ImportError as err:  # pragma: no cover - depends on the environment
    raise ImportError('dash_adapter needs Dash: pip install "Flask-LongTask[dash]"') from err

from .decorator import long_callback as long_callback
from .manager import LongTaskManager as LongTaskManager
