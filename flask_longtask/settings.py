"""The ``LONGTASK_*`` settings, checked once at ``init_app``, where a mistake is made.

Each known key (:data:`~flask_longtask.config.KNOWN_KEYS`) is checked with the rule of the part
that reads it, so a value that is not valid fails at ``init_app`` with a ``TypeError`` or
``ValueError`` that names the key and shows a valid value (:data:`~flask_longtask.config.EXAMPLES`),
instead of failing later, at a first submit or request, with an error that names nothing. Any
other ``LONGTASK_*`` key is warned about (:class:`~flask_longtask.exceptions.UnknownSettingWarning`),
with the nearest known key.
"""

from __future__ import annotations

import difflib
import math
import os
import sys
import typing as t
import warnings

from .attempts import time_limit_value
from .config import EXAMPLES, KNOWN_KEYS
from .exceptions import UnknownSettingWarning

Config = t.Mapping[str, t.Any]


def _is_number(value: t.Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _seconds(
    key: str, *, above: bool = False, none: bool = False, wrong_type: type[Exception] = TypeError
) -> t.Callable[[Config], None]:
    """A rule: a finite number of seconds, from 0 (``above``: more than 0), or ``None``.
    ``wrong_type``: the error for a value that is not a number."""
    least = "more than 0" if above else "from 0"

    def rule(config: Config) -> None:
        value = config[key]
        if value is None and none:
            return
        if not _is_number(value):
            raise wrong_type(f"{key} must be a number of seconds{' or None' if none else ''}, not {value!r}.")
        if not (0 < value < math.inf if above else 0 <= value < math.inf):  # (NaN too)
            raise ValueError(f"{key} must be a finite number of seconds {least}, not {value!r}.")

    return rule


def _whole(key: str, least: int, *, none: bool = False, inf: bool = False) -> t.Callable[[Config], None]:
    """A rule: a whole number from ``least`` (or ``None``, or ``math.inf``, where allowed)."""

    def rule(config: Config) -> None:
        value = config[key]
        if (value is None and none) or (inf and value == math.inf):
            return
        if isinstance(value, bool) or not isinstance(value, int):
            others = "".join((", None" if none else "", ", math.inf" if inf else ""))
            raise TypeError(f"{key} must be a whole number{others}, not {value!r}.")
        if value < least:
            raise ValueError(f"{key} must be a whole number from {least}, not {value!r}.")

    return rule


def _text(key: str, *, none: bool = True, kinds: tuple[type, ...] = (str,)) -> t.Callable[[Config], None]:
    """A rule: a value of ``kinds`` (a string), or ``None``."""

    def rule(config: Config) -> None:
        value = config[key]
        if not (isinstance(value, kinds) or (value is None and none)):
            names = " or ".join(k.__name__ for k in kinds) + (" or None" if none else "")
            raise TypeError(f"{key} must be a {names}, not {value!r}.")

    return rule


def _flag(key: str) -> t.Callable[[Config], None]:
    """A rule: ``True`` or ``False`` (``1`` or ``0``, as read from an environment variable)."""

    def rule(config: Config) -> None:
        value = config[key]
        if not (isinstance(value, bool) or (type(value) is int and value in (0, 1))):
            raise TypeError(f"{key} must be True or False, not {value!r}.")

    return rule


def _prefix(config: Config) -> None:
    _text("LONGTASK_HTTP_PREFIX")(config)
    value = config["LONGTASK_HTTP_PREFIX"]
    if value is not None and not value.startswith("/"):
        raise ValueError(f"LONGTASK_HTTP_PREFIX must be a URL path that starts with '/', not {value!r}.")


def _pool(config: Config) -> None:
    # The pool's own check (it says how the three relate), without importing the pool.
    from .backends import pool_size

    names = ("LONGTASK_WORKERS", "LONGTASK_MAX_WORKERS", "LONGTASK_WORKER_IDLE")
    workers, most, idle = (config[name] for name in names)
    pool_size.settings(workers, most, idle, names=names)


def _async_concurrency(config: Config) -> None:
    from .coroutines import concurrency_value

    concurrency_value(config["LONGTASK_ASYNC_CONCURRENCY"])


def _time_limit(config: Config) -> None:
    time_limit_value(config["LONGTASK_TIME_LIMIT"], "LONGTASK_TIME_LIMIT")


def _http(config: Config) -> None:
    # The HTTP API's own checks, also made when it is registered.
    from .http import error_detail
    from .http_limits import check_settings

    check_settings(config)
    error_detail(config, debug=False)


def _dashboard(config: Config) -> None:
    # The dashboard's own check, also made when it is registered.
    from .dashboard import check_settings

    check_settings(config)


#: Each rule and the keys it checks.
RULES: t.Final[tuple[tuple[tuple[str, ...], t.Callable[[Config], None]], ...]] = (
    (("LONGTASK_BACKEND",), _text("LONGTASK_BACKEND", none=False)),
    (("LONGTASK_WORKERS", "LONGTASK_MAX_WORKERS", "LONGTASK_WORKER_IDLE"), _pool),
    (("LONGTASK_RESULT_EXPIRE",), _seconds("LONGTASK_RESULT_EXPIRE", above=True)),
    (("LONGTASK_CANCEL_GRACE",), _seconds("LONGTASK_CANCEL_GRACE")),
    (("LONGTASK_ASYNC_CONCURRENCY",), _async_concurrency),
    (("LONGTASK_TIME_LIMIT",), _time_limit),
    (("LONGTASK_PROGRESS_INTERVAL",), _seconds("LONGTASK_PROGRESS_INTERVAL")),
    (("LONGTASK_HEARTBEAT_TIMEOUT",), _seconds("LONGTASK_HEARTBEAT_TIMEOUT", above=True)),
    (("LONGTASK_DISKCACHE_DIR",), _text("LONGTASK_DISKCACHE_DIR", kinds=(str, os.PathLike))),
    (("LONGTASK_SECRET_KEY",), _text("LONGTASK_SECRET_KEY", kinds=(str, bytes))),
    (("LONGTASK_EMBEDDED_WORKER",), _flag("LONGTASK_EMBEDDED_WORKER")),
    (("LONGTASK_CELERY_BROKER_URL",), _text("LONGTASK_CELERY_BROKER_URL")),
    (("LONGTASK_CELERY_RESULT_BACKEND",), _text("LONGTASK_CELERY_RESULT_BACKEND")),
    # (ValueError whatever is wrong, as CeleryBackend.init_app has always raised)
    (
        ("LONGTASK_CELERY_REQUEUE_AFTER",),
        _seconds("LONGTASK_CELERY_REQUEUE_AFTER", above=True, none=True, wrong_type=ValueError),
    ),
    (("LONGTASK_MAX_QUEUED",), _whole("LONGTASK_MAX_QUEUED", 0, none=True, inf=True)),
    (("LONGTASK_HTTP_PREFIX",), _prefix),
    (("LONGTASK_HTTP_MAX_BODY",), _whole("LONGTASK_HTTP_MAX_BODY", 1)),
    (("LONGTASK_SSE_TIMEOUT",), _seconds("LONGTASK_SSE_TIMEOUT", above=True)),
    (
        (
            "LONGTASK_SSE_MAX_STREAMS",
            "LONGTASK_SSE_MAX_STREAMS_PER_OWNER",
            "LONGTASK_HTTP_MAX_ACTIVE",
            "LONGTASK_SSE_WINDOW",
            "LONGTASK_HTTP_ERRORS",
        ),
        _http,
    ),
    (("LONGTASK_DASHBOARD_REFRESH", "LONGTASK_DASHBOARD_MAX_STREAMS"), _dashboard),
)


def check(config: Config) -> None:
    """Warn about unknown ``LONGTASK_*`` keys, then check every known one (all are set: ``init_app``
    sets the defaults first).

    :raises TypeError: a value of the wrong type, named, with a valid one.
    :raises ValueError: a value out of range, named, with a valid one.
    """
    warn_unknown(config)
    for keys, rule in RULES:
        try:
            rule(config)
        except (TypeError, ValueError) as exc:
            message = str(exc)
            key = next((k for k in keys if message.startswith(f"{k} ")), keys[0])
            raise type(exc)(
                f"{message} A valid setting: app.config[{key!r}] = {EXAMPLES[key]}"
                f" (before init_app; see docs/configuration.md)."
            ) from None


def warn_unknown(config: Config) -> None:
    """Warn (:class:`UnknownSettingWarning`) about each ``LONGTASK_*`` key no part reads, naming
    the nearest known key."""
    for key in config:
        if isinstance(key, str) and key.startswith("LONGTASK_") and key not in KNOWN_KEYS:
            # (compared without the prefix they share, which would make every key look near)
            near = difflib.get_close_matches(key[9:], sorted(k[9:] for k in KNOWN_KEYS), n=1, cutoff=0.6)
            hint = f" Did you mean LONGTASK_{near[0]}?" if near else ""
            warnings.warn(
                f"{key} is not a Flask-LongTask setting, so it is ignored.{hint}"
                " The settings are listed in docs/configuration.md.",
                UnknownSettingWarning,
                stacklevel=_outside(),
            )


def _outside() -> int:
    """The ``stacklevel`` of a warning that points at the first caller outside this package
    (the user's ``init_app`` or ``LongTask(app)``), for a warning of the function that calls this."""
    frame = sys._getframe(1)  # (the function that warns)
    level = 1
    while frame.f_back is not None and frame.f_globals.get("__name__", "").partition(".")[0] == "flask_longtask":
        frame, level = frame.f_back, level + 1
    return level
