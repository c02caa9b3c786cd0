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

    :raises ValueError: unknown name, or an import path that does not import (chained from the
        import's error) or names no :class:`Backend` subclass.
    :raises ImportError: a backend named by its name whose dependencies are not installed
        (``"celery"`` without the ``celery`` extra): the error says what to install.
    """
    path = BACKENDS.get(name, name)
    module_name, _, attr = path.partition(":")
    if not attr or not module_name:
        raise ValueError(f"Unknown LONGTASK_BACKEND {name!r}: use one of {sorted(BACKENDS)} or {_FORM}.")
    try:
        cls = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        if name in BACKENDS:  # (its own error says what to install)
            raise
        raise ValueError(
            f"LONGTASK_BACKEND = {name!r} cannot be imported: {exc}. It must be one of"
            f" {sorted(BACKENDS)} or {_FORM}, importable where the app runs (its package on"
            " sys.path: installed, or in the directory the app is started from)."
        ) from exc
    if not (isinstance(cls, type) and issubclass(cls, Backend)):
        raise ValueError(
            f"LONGTASK_BACKEND {name!r} is not a flask_longtask.backends.Backend subclass: it must be {_FORM}."
        )
    return cls


#: The form of a ``LONGTASK_BACKEND`` import path, as errors show it.
_FORM = "the import path of a Backend subclass, 'package.module:Class' (e.g. 'myapp.backends:SqliteBackend')"


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
