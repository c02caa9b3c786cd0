"""Dash's background callbacks (and dash-labs' ``long_callback``) on Flask-LongTask."""

from __future__ import annotations

from .decorator import long_callback as long_callback
from .manager import LongTaskManager as LongTaskManager
