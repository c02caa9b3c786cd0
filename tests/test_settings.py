"""A misconfigured ``LONGTASK_*`` setting fails at ``init_app``, where the mistake is made, with
the setting's name and a valid value; an unknown ``LONGTASK_*`` key is warned about, with the
nearest known key; and the known keys are the documented ones."""

from __future__ import annotations

import math
import re
import warnings
from pathlib import Path

import pytest
from flask import Flask

import flask_longtask
from flask_longtask import LongTask, UnknownSettingWarning
from flask_longtask.backends import ThreadBackend
from flask_longtask.config import DEFAULT_CONFIG, EXAMPLES, KNOWN_KEYS
from flask_longtask.settings import RULES

ROOT = Path(__file__).resolve().parent.parent

#: A value that is not valid, for every known key, and the error it gets.
BAD: list[tuple[str, object, type[Exception]]] = [
    ("LONGTASK_BACKEND", 3, TypeError),
    ("LONGTASK_WORKERS", "abc", TypeError),
    ("LONGTASK_WORKERS", -1, ValueError),
    ("LONGTASK_WORKERS", 2.5, TypeError),
    ("LONGTASK_MAX_WORKERS", 0, ValueError),
    ("LONGTASK_WORKER_IDLE", "60", TypeError),
    ("LONGTASK_ASYNC_CONCURRENCY", 0, ValueError),
    ("LONGTASK_ASYNC_CONCURRENCY", "many", ValueError),
    ("LONGTASK_RESULT_EXPIRE", "1h", TypeError),
    ("LONGTASK_RESULT_EXPIRE", 0, ValueError),
    ("LONGTASK_CANCEL_GRACE", -0.5, ValueError),
    ("LONGTASK_TIME_LIMIT", "5", TypeError),
    ("LONGTASK_PROGRESS_INTERVAL", math.nan, ValueError),
    ("LONGTASK_HEARTBEAT_TIMEOUT", 0, ValueError),
    ("LONGTASK_DISKCACHE_DIR", 7, TypeError),
    ("LONGTASK_SECRET_KEY", 1234, TypeError),
    ("LONGTASK_EMBEDDED_WORKER", "False", TypeError),
    ("LONGTASK_CELERY_BROKER_URL", 6379, TypeError),
    ("LONGTASK_CELERY_RESULT_BACKEND", ["redis://"], TypeError),
    ("LONGTASK_CELERY_REQUEUE_AFTER", -1, ValueError),
    ("LONGTASK_CELERY_REQUEUE_AFTER", "60", ValueError),  # (ValueError for any, as it always was)
    ("LONGTASK_MAX_QUEUED", "100", TypeError),
    ("LONGTASK_MAX_QUEUED", -1, ValueError),
    ("LONGTASK_HTTP_PREFIX", "jobs", ValueError),
    ("LONGTASK_HTTP_MAX_BODY", 0, ValueError),
    ("LONGTASK_SSE_TIMEOUT", math.inf, ValueError),
    ("LONGTASK_SSE_WINDOW", 0, ValueError),
    ("LONGTASK_SSE_MAX_STREAMS", -1, ValueError),
    ("LONGTASK_SSE_MAX_STREAMS_PER_OWNER", -1, ValueError),
    ("LONGTASK_HTTP_MAX_ACTIVE", 0, ValueError),
    ("LONGTASK_HTTP_ERRORS", "all", ValueError),
    ("LONGTASK_DASHBOARD_REFRESH", 100, ValueError),
    ("LONGTASK_DASHBOARD_MAX_STREAMS", -1, ValueError),
]


def test_every_known_key_has_a_bad_value_here_and_an_example() -> None:
    assert {key for key, _, _ in BAD} == KNOWN_KEYS
    assert set(EXAMPLES) == KNOWN_KEYS == set(DEFAULT_CONFIG)
    checked = [key for keys, _ in RULES for key in keys]  # (a new key needs a rule)
    assert sorted(checked) == sorted(KNOWN_KEYS)


@pytest.mark.parametrize(("key", "value", "error"), BAD, ids=[f"{k}={v!r}" for k, v, _ in BAD])
def test_a_bad_setting_fails_at_init_app_naming_it_with_a_valid_one(
    key: str, value: object, error: type[Exception]
) -> None:
    app = Flask(__name__)
    app.config.update({"LONGTASK_BACKEND": "thread", "SECRET_KEY": "s", key: value})
    example = re.escape(f"A valid setting: app.config[{key!r}] = {EXAMPLES[key]}")
    with pytest.raises(error, match=rf"^{key} .*{re.escape(repr(value))}.*{example}") as raised:
        LongTask(app)
    assert "longtask" not in app.extensions  # nothing half registered
    # The same with a backend passed in (the setting is still the app's).
    app = Flask(__name__)
    app.config.update({"SECRET_KEY": "s", key: value})
    backend = ThreadBackend(workers=1)
    with pytest.raises(error, match=rf"^{key} "):
        LongTask(app, backend=backend)
    assert type(raised.value) is error


def test_the_examples_are_valid() -> None:
    app = Flask(__name__)
    examples = {key: eval(value) for key, value in EXAMPLES.items()}  # (literals: strings, numbers)
    app.config.update(examples, SECRET_KEY="s")
    longtask = LongTask(app)  # (the example backend: "thread")
    assert isinstance(longtask._state(app).backend, ThreadBackend)
    assert app.config["LONGTASK_WORKERS"] == 4


def test_values_read_from_the_environment_pass(monkeypatch: pytest.MonkeyPatch) -> None:
    """``app.config.from_prefixed_env()`` reads values as JSON: ``0`` and ``1`` for flags."""
    for name, value in [("WORKERS", "2"), ("EMBEDDED_WORKER", "0"), ("MAX_QUEUED", "10"), ("SSE_WINDOW", "1.5")]:
        monkeypatch.setenv(f"FLASK_LONGTASK_{name}", value)
    app = Flask(__name__)
    app.config.from_prefixed_env()
    LongTask(app, backend=ThreadBackend(workers=1))
    assert app.config["LONGTASK_EMBEDDED_WORKER"] == 0 and app.config["LONGTASK_WORKERS"] == 2


def test_a_workers_setting_that_is_not_a_number_fails_at_init_app_not_at_submit() -> None:
    """The issue's case: ``LONGTASK_WORKERS = "abc"`` on the thread backend passed init_app
    and failed at the first submit with a TypeError about ``<``."""
    app = Flask(__name__)
    app.config.update(LONGTASK_BACKEND="thread", LONGTASK_WORKERS="abc")
    with pytest.raises(TypeError, match=r"^LONGTASK_WORKERS must be a whole number.*'abc'.* = 4"):
        LongTask(app)


@pytest.mark.parametrize(
    ("path", "cause", "said"),
    [
        ("nopkg.backends:MyBackend", ModuleNotFoundError, "No module named 'nopkg'"),
        ("flask_longtask.backends:NoSuchBackend", AttributeError, "has no attribute 'NoSuchBackend'"),
    ],
)
def test_a_backend_path_that_does_not_import_names_the_setting_and_its_form(
    path: str, cause: type[Exception], said: str
) -> None:
    app = Flask(__name__)
    app.config["LONGTASK_BACKEND"] = path
    with pytest.raises(ValueError, match=rf"^LONGTASK_BACKEND = '{re.escape(path)}' cannot be imported") as raised:
        LongTask(app)
    message = str(raised.value)
    assert said in message and "'package.module:Class'" in message and "'thread'" in message
    assert isinstance(raised.value.__cause__, cause)  # chained: its traceback is shown too


def test_a_path_without_a_module_or_class_is_refused() -> None:
    for value in ("nope", ":Backend"):
        app = Flask(__name__)
        app.config["LONGTASK_BACKEND"] = value
        with pytest.raises(ValueError, match=r"Unknown LONGTASK_BACKEND.*'package.module:Class'"):
            LongTask(app)


def test_an_unknown_key_warns_with_the_nearest_known_one() -> None:
    app = Flask(__name__)
    app.config.update(LONGTASK_WORKER=4, LONGTASK_RESULT_EXPIRES=60, LONGTASK_COLOUR="blue")
    with pytest.warns(UnknownSettingWarning) as caught:
        LongTask(app, backend=ThreadBackend(workers=1))
    messages = sorted(str(w.message) for w in caught)
    assert messages == [
        "LONGTASK_COLOUR is not a Flask-LongTask setting, so it is ignored."
        " The settings are listed in docs/configuration.md.",
        "LONGTASK_RESULT_EXPIRES is not a Flask-LongTask setting, so it is ignored."
        " Did you mean LONGTASK_RESULT_EXPIRE? The settings are listed in docs/configuration.md.",
        "LONGTASK_WORKER is not a Flask-LongTask setting, so it is ignored."
        " Did you mean LONGTASK_WORKERS? The settings are listed in docs/configuration.md.",
    ]
    # Shown at the line that registered the extension (here), not inside the package.
    assert {w.filename for w in caught} == {__file__}
    assert issubclass(UnknownSettingWarning, UserWarning)


def test_known_keys_and_other_prefixes_do_not_warn() -> None:
    app = Flask(__name__)
    app.config.update(DEFAULT_CONFIG, LONGTASK_WORKERS=2, SECRET_KEY="s", MY_LONGTASK_THING=1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        LongTask(app, backend=ThreadBackend(workers=1))


def _documented(text: str) -> set[str]:
    return set(re.findall(r"^\| `(LONGTASK_[A-Z_]+)` \|", text, re.MULTILINE))


def test_the_known_keys_are_the_documented_ones_and_the_ones_the_code_reads() -> None:
    """One set (``flask_longtask.config.KNOWN_KEYS``), so the warning cannot drift: every key
    docs/configuration.md and the README document is known and every known key is documented,
    and every ``"LONGTASK_*"`` string the package and the Dash adapter use is a known key."""
    assert _documented((ROOT / "docs" / "configuration.md").read_text()) == KNOWN_KEYS
    assert _documented((ROOT / "README.md").read_text()) == KNOWN_KEYS
    used: set[str] = set()
    for package in (Path(flask_longtask.__file__).parent, ROOT / "dash_adapter"):
        for source in package.rglob("*.py"):
            used |= set(re.findall(r"[\"'](LONGTASK_[A-Z_]*[A-Z])[\"']", source.read_text()))
    assert used, "no LONGTASK_* strings found: is the pattern right?"
    assert used <= KNOWN_KEYS, f"read by the code but not known: {sorted(used - KNOWN_KEYS)}"
