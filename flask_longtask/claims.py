"""What a stored claim of a job says about its owner (see :func:`flask_longtask.worker.owner_of`)."""

from __future__ import annotations

import typing as t


def owner_pid(claim: t.Any) -> int | None:
    """The process id of the worker that holds a stored claim (see :func:`owner_of`).

    ``None`` for a cancel's claim, or for anything that is not a well-formed claim: stored data
    is not trusted.

    >>> owner_pid({"by": "web-1:4242:140089", "at": 0.0}), owner_pid({"by": "cancel", "at": 0.0})
    (4242, None)
    """
    by = claim.get("by") if isinstance(claim, dict) else None
    parts = by.rsplit(":", 2) if isinstance(by, str) else []
    if len(parts) != 3 or not (parts[1].isascii() and parts[1].isdigit()):
        return None
    pid = int(parts[1])
    return pid if pid > 0 else None
