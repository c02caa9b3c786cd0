"""Backends: where jobs run and where their state lives. See :class:`Backend` for the interface.

What a custom backend may use is exported here: :class:`Backend` to subclass, :data:`MISSING`,
the values the core hands it (:data:`Write`, :class:`JobRequest`, :class:`NewJob`,
:class:`JobEnd`, and for its listing index :class:`JobEntry`, :class:`JobQuery` and
:class:`Tally`), and the worker's entry points it calls: :func:`execute` to run a job,
:class:`Handoff` for a job it claimed for its worker itself, :func:`mark_lost` for a job whose
worker it saw die or stopped.
"""

from __future__ import annotations

import importlib
import typing as t

from ..worker import Handoff as Handoff
from ..worker import execute as execute
from ..worker import mark_lost as mark_lost
from .base import MISSING as MISSING
from .base import Backend as Backend
from .base import JobEnd as JobEnd
from .base import JobEntry as JobEntry
from .base import JobQuery as JobQuery
from .base import JobRequest as JobRequest
from .base import NewJob as NewJob
from .base import Tally as Tally
from .base import Write as Write
from .thread import ThreadBackend as ThreadBackend

if t.TYPE_CHECKING:  # pragma: no cover
    from flask import Flask

#: ``LONGTASK_BACKEND`` names and the classes they stand for. Any other value is read as an
#: import path, ``"package.module:Class"``.
BACKENDS: dict[str, str] = {
    "thread": "flask_longtask.backends.thread:ThreadBackend",
    "diskcache": "flask_longtask.backends.diskcache:DiskcacheBackend",
    "celery": "flask_longtask.backends.celery:CeleryBackend",
}


def backend_class(name: str) -> type[Backend]:
    """The backend class for a ``LONGTASK_BACKEND`` value.

    :raises ValueError: unknown name or import path.
    """
    path = BACKENDS.get(name, name)
    module_name, _, attr = path.partition(":")
    if not attr:
        raise ValueError(f"Unknown LONGTASK_BACKEND {name!r}: use one of {sorted(BACKENDS)} or 'package.module:Class'.")
    cls = getattr(importlib.import_module(module_name), attr)
    if not (isinstance(cls, type) and issubclass(cls, Backend)):
        raise ValueError(f"LONGTASK_BACKEND {name!r} is not a flask_longtask.backends.Backend subclass.")
    return cls


def backend_from_app(app: Flask) -> Backend:
    """Make the backend that ``app.config["LONGTASK_BACKEND"]`` names, configured from the app."""
    return backend_class(app.config["LONGTASK_BACKEND"]).from_app(app)


__all__ = [
    "MISSING",
    "Backend",
    "Handoff",
    "JobEnd",
    "JobEntry",
    "JobQuery",
    "JobRequest",
    "NewJob",
    "Tally",
    "ThreadBackend",
    "Write",
    "backend_class",
    "backend_from_app",
    "execute",
    "mark_lost",
]
