"""The optional HTTP API: submit, watch, stream and cancel jobs as JSON and Server-Sent Events.

Nothing is reachable unless the app registers :meth:`LongTask.blueprint
<flask_longtask.LongTask.blueprint>` (or sets ``LONGTASK_HTTP_PREFIX``), and then only tasks
marked ``@longtask.task(http=True)`` can be submitted. Jobs belong to whoever submitted them
(the owner loader; by default a random id in the Flask session): anybody else gets ``404``.
Bodies are JSON only and nothing from a request is ever unpickled. Every error is answered as
JSON, 500s included, and never with an exception's text outside debug mode. The limits on
streams and active jobs are in :mod:`flask_longtask.http_limits`.
"""

from __future__ import annotations

import functools
import hashlib
import inspect
import json
import math
import re
import secrets
import time
import types
import typing as t
from datetime import datetime, timezone

from flask import (
    Blueprint,
    Flask,
    Response,
    current_app,
    got_request_exception,
    jsonify,
    request,
    session,
    stream_with_context,
    url_for,
)
from flask.blueprints import BlueprintSetupState
from werkzeug.exceptions import HTTPException

from .attempts import attempt_of, retries_of
from .backends.base import MISSING
from .config import DEFAULT_CONFIG, HTTP_MAX_QUEUED
from .exceptions import JobNotFoundError, QueueFullError
from .http_limits import RETRY_AFTER, LimitReached, Limits, check_settings
from .job import JobStatus
from .store import error_record, keys

if t.TYPE_CHECKING:  # pragma: no cover
    from .extension import LongTask
    from .store import JobStore

_ID = re.compile(r"[0-9a-f]{32}")
_METHODS = ["GET", "POST", "PUT", "PATCH", "DELETE"]
_SESSION_KEY = "_longtask_owner"
#: The deepest nesting of arrays and objects a request's JSON may have: anything deeper is a
#: ``400`` (deeper still, Python's parser would run out of stack).
MAX_DEPTH: t.Final = 64
_TOO_DEEP = f"The body is nested deeper than {MAX_DEPTH} levels of arrays and objects."
_ERRORS = ("type", "message", "traceback")


class _HTTPError(Exception):
    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.headers = status, message, headers or {}


def _error(status: int, message: str, headers: dict[str, str] | None = None, **details: str) -> Response:
    response = jsonify(error={"status": status, "message": message, **details})
    response.status_code = status
    response.headers.update(headers or {})
    return response


def _iso(stamp: float | None) -> str | None:
    return None if stamp is None else datetime.fromtimestamp(stamp, timezone.utc).isoformat()


def _number(value: t.Any) -> float | None:
    """A finite number from a stored record, or ``None`` (whatever else storage holds)."""
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    return None


def _jsonable(value: t.Any) -> tuple[t.Any, bool]:
    """``(value as JSON data, True)``, or ``(None, False)`` when the app's JSON cannot carry it.

    ``NaN`` and the infinities become ``null``, as JavaScript's ``JSON.stringify`` has them:
    JSON has no such numbers, and a browser's ``JSON.parse`` refuses them.
    """
    try:
        text = current_app.json.dumps(value)
    except (TypeError, ValueError):
        return None, False
    return json.loads(text, parse_constant=lambda name: None, parse_float=_finite_or_none), True


def _finite_or_none(text: str) -> float | None:
    number = float(text)
    return number if math.isfinite(number) else None


class _NotFinite(ValueError):
    pass


def _finite(text: str) -> float:
    number = float(text)  # "1e999" is a float JSON allows: infinity
    if not math.isfinite(number):
        raise _NotFinite(text)
    return number


def _not_a_number(name: str) -> t.NoReturn:
    raise _NotFinite(name)


def _depth(value: t.Any) -> int:
    """How deep arrays and objects nest in ``value``, counted up to just past :data:`MAX_DEPTH`."""
    deepest, todo = 0, [(value, 1)]
    while todo:
        item, depth = todo.pop()
        if isinstance(item, (list, dict)):
            if depth > MAX_DEPTH:
                return depth
            deepest = max(deepest, depth)
            todo.extend((child, depth + 1) for child in (item.values() if isinstance(item, dict) else item))
    return deepest


def parse_json(data: bytes) -> t.Any:
    """A request body as JSON data; ``400`` for anything a browser's ``JSON.parse`` would not
    give (``NaN``, ``Infinity``, numbers out of range) and for nesting deeper than :data:`MAX_DEPTH`."""
    try:
        value = json.loads(data, parse_constant=_not_a_number, parse_float=_finite)
    except _NotFinite:
        raise _HTTPError(400, "The body holds NaN, Infinity or a number out of range: JSON has none.") from None
    except RecursionError:
        raise _HTTPError(400, _TOO_DEEP) from None
    except ValueError as exc:
        raise _HTTPError(400, f"The body is not valid JSON: {exc}.") from None
    if _depth(value) > MAX_DEPTH:
        raise _HTTPError(400, _TOO_DEEP)
    return value


def error_detail(config: t.Mapping[str, t.Any], debug: bool) -> str:
    """How much of a failed job's error the API shows: ``LONGTASK_HTTP_ERRORS``, or by default
    ``"traceback"`` in debug mode and ``"type"`` otherwise."""
    value = config.get("LONGTASK_HTTP_ERRORS")
    if value is None:
        return "traceback" if debug else "type"
    if value not in _ERRORS:
        raise ValueError(
            f"LONGTASK_HTTP_ERRORS must be 'type', 'message', 'traceback' or None (the default), not {value!r}."
        )
    return t.cast(str, value)


_JSON_TYPES: dict[t.Any, tuple[type, ...]] = {
    int: (int,),
    float: (int, float),
    str: (str,),
    bool: (bool,),
    list: (list,),
    dict: (dict,),
    type(None): (type(None),),
}


def _accepts(annotation: t.Any, value: t.Any) -> bool:
    """Whether a JSON value fits a parameter's annotation; ``True`` when that cannot be told."""
    if annotation is t.Any or annotation is inspect.Parameter.empty:
        return True
    if t.get_origin(annotation) in (t.Union, types.UnionType):
        return any(_accepts(arg, value) for arg in t.get_args(annotation))
    plain = t.get_origin(annotation) or annotation
    if plain not in _JSON_TYPES:
        return True  # a type JSON cannot express: the task checks it itself
    if isinstance(value, bool) and plain is not bool:
        return False  # JSON true is not a number
    return isinstance(value, _JSON_TYPES[plain])


@functools.cache
def _hints(func: t.Callable[..., t.Any]) -> dict[str, t.Any]:
    try:
        return t.get_type_hints(func)
    except Exception:  # unresolvable annotations: nothing to check against
        return {}


def _check_types(func: t.Callable[..., t.Any], bound: inspect.BoundArguments) -> str | None:
    """A message naming the first argument whose JSON type does not fit the signature."""
    hints = _hints(func)
    for name, value in bound.arguments.items():
        kind = bound.signature.parameters[name].kind
        values = (
            value
            if kind is inspect.Parameter.VAR_POSITIONAL
            else value.values()
            if kind is inspect.Parameter.VAR_KEYWORD
            else [value]
        )
        for item in values:
            if name in hints and not _accepts(hints[name], item):
                return f"argument {name!r} must be {_describe(hints[name])}, not {type(item).__name__}"
    return None


def _describe(annotation: t.Any) -> str:
    return getattr(annotation, "__name__", None) or str(annotation).replace("typing.", "")


def make_blueprint(longtask: LongTask, url_prefix: str = "/longtask") -> Blueprint:
    """Build the HTTP API for ``longtask``; see :meth:`LongTask.blueprint`."""
    bp = Blueprint("longtask", __name__, url_prefix=url_prefix)
    limits = Limits()

    @bp.record_once
    def check_app(state: BlueprintSetupState) -> None:
        """Refuse, as the API is registered, an app it could not serve, and give its queue an end."""
        app = state.app
        if not app.secret_key and longtask._owner_loader is None:
            raise RuntimeError(
                "The Flask-LongTask HTTP API keeps each visitor's jobs apart through the Flask session,"
                " which needs a secret: set app.config['SECRET_KEY'] before the API is registered"
                " (by init_app, with LONGTASK_HTTP_PREFIX, or by app.register_blueprint(longtask.blueprint())),"
                " or say who the caller is with @longtask.owner_loader before then."
            )
        check_settings(app.config)
        error_detail(app.config, app.debug)
        if app.config.get("LONGTASK_MAX_QUEUED", DEFAULT_CONFIG["LONGTASK_MAX_QUEUED"]) is None:
            app.config["LONGTASK_MAX_QUEUED"] = HTTP_MAX_QUEUED

    def store() -> JobStore:
        return longtask._state().store

    def owner() -> str:
        if longtask._owner_loader is not None:
            who = longtask._owner_loader()
            if who is None:
                raise _HTTPError(401, "Sign in to use this API.")
            return str(who)
        if not current_app.secret_key:
            raise RuntimeError(
                "The Flask-LongTask HTTP API keeps each visitor's jobs apart through the Flask session:"
                " set SECRET_KEY, or say who the caller is with @longtask.owner_loader."
            )
        who = session.get(_SESSION_KEY)
        if not isinstance(who, str):
            who = session[_SESSION_KEY] = secrets.token_hex(16)
        return who

    def access_key(job_id: str, who: str) -> str:
        return keys.access(job_id, _digest(who))

    def load(job_id: str, who: str) -> dict[str, t.Any]:
        """The job's record, if it exists and ``who`` may see it; otherwise 404, never 403."""
        if _ID.fullmatch(job_id):
            try:
                record = store().read_record(job_id)
            except JobNotFoundError:
                pass
            else:
                if record.get("owner") == who or store().backend.get(access_key(job_id, who)) is not MISSING:
                    return record
        raise _HTTPError(404, f"No job {job_id!r}.")

    def job_json(record: dict[str, t.Any]) -> dict[str, t.Any]:
        s = store()
        job_id = record["id"]
        progress, _ = _jsonable(s.read_progress(job_id)[1])
        out: dict[str, t.Any] = {
            "id": job_id,
            "task": record["task"],
            "status": record["status"],
            "progress": progress,
            "created_at": _iso(record["created"]),
            "started_at": _iso(record.get("started")),
            "finished_at": _iso(record.get("finished")),
            "time_limit": _number(record.get("time_limit")),
            "attempt": attempt_of(record),
            "retries": retries_of(record),
            "url": url_for(".job", job_id=job_id),
        }
        if record["status"] == JobStatus.SUCCEEDED.value:
            result, ok = _jsonable(s.read_result(job_id))
            out["result"] = result
            if not ok:
                out["result_error"] = "The result cannot be sent as JSON."
        elif record["status"] == JobStatus.FAILED.value:
            error = record.get("error") or {}
            detail = error_detail(current_app.config, current_app.debug)
            out["error"] = {"type": error.get("type")}
            if detail != "type":
                out["error"]["message"] = error.get("message")
            if detail == "traceback":
                out["error"]["traceback"] = error.get("traceback")
        return out

    def job_response(record: dict[str, t.Any], status: int = 200) -> Response:
        response = jsonify(job_json(record))
        response.status_code = status
        if not JobStatus(record["status"]).is_finished:
            response.headers["Retry-After"] = "1"
        if status == 202:
            response.headers["Location"] = url_for(".job", job_id=record["id"])
        return response

    def read_body() -> dict[str, t.Any]:
        limit = int(current_app.config["LONGTASK_HTTP_MAX_BODY"])
        if request.content_length is not None and request.content_length > limit:
            raise _HTTPError(413, f"The body is larger than {limit} bytes.")
        # JSON only, even for an empty body: a cross-site <form> cannot send this content type
        # without a CORS preflight, so another site cannot start jobs with a visitor's cookie.
        if request.mimetype != "application/json":
            raise _HTTPError(415, "Send the arguments as JSON with 'Content-Type: application/json'.")
        data = request.stream.read(limit + 1)
        if len(data) > limit:
            raise _HTTPError(413, f"The body is larger than {limit} bytes.")
        if not data.strip():
            return {}
        body = parse_json(data)
        if not isinstance(body, dict) or set(body) - {"args", "kwargs"}:
            raise _HTTPError(400, 'The body must be a JSON object {"args": [...], "kwargs": {...}}.')
        return body

    @bp.errorhandler(_HTTPError)
    def http_error(err: _HTTPError) -> Response:
        return _error(err.status, err.message, err.headers)

    @bp.errorhandler(LimitReached)
    def limit_reached(err: LimitReached) -> Response:
        return _error(err.status, err.message, {"Retry-After": str(RETRY_AFTER)})

    @bp.errorhandler(Exception)
    def unexpected(exc: Exception) -> Response:
        """Any other error in a view, as JSON: werkzeug's HTTP errors with their status; anything
        else a ``500`` that says nothing of the exception outside debug mode (it goes to the
        app's log and its ``got_request_exception`` receivers, as Flask does for a ``500``)."""
        if isinstance(exc, HTTPException):
            headers = {k: v for k, v in exc.get_headers() if k.lower() != "content-type"}
            return _error(exc.code or 500, exc.description or exc.name, headers)
        return _error(500, "Internal server error.", None, **reported(exc))

    def reported(exc: Exception) -> dict[str, str]:
        """Log ``exc`` as Flask logs a ``500`` (the app's log, ``got_request_exception``); what
        the client may be told of it: nothing outside debug mode."""
        app = t.cast(Flask, current_app._get_current_object())  # type: ignore[attr-defined]
        got_request_exception.send(app, _async_wrapper=app.ensure_sync, exception=exc)
        app.log_exception((type(exc), exc, t.cast(types.TracebackType, exc.__traceback__)))
        if not app.debug:
            return {}
        error = error_record(exc)
        return {"exception": f"{error['type']}: {error['message']}", "traceback": error["traceback"]}

    def only(*methods: str) -> None:
        if request.method not in methods:
            raise _HTTPError(405, f"Use {' or '.join(methods)} here.", {"Allow": ", ".join(methods)})

    @bp.route("/tasks/<path:name>", methods=_METHODS)
    def submit(name: str) -> Response:
        only("POST")
        task = longtask._tasks.get(name)
        if task is None or not task.http:
            raise _HTTPError(404, f"No task {name!r} is offered over HTTP.")
        who = owner()
        if longtask._authorize is not None and not longtask._authorize(task):
            raise _HTTPError(403, f"You may not run {name!r}.")
        body = read_body()
        args, kwargs = body.get("args", []), body.get("kwargs", {})
        if not isinstance(args, list) or not isinstance(kwargs, dict):
            raise _HTTPError(400, "'args' must be a JSON array and 'kwargs' a JSON object.")
        bad = [k for k in kwargs if not k.isidentifier() or k.startswith("_")]
        if bad:
            raise _HTTPError(400, f"Argument names {bad!r} are not accepted.")
        try:
            bound = task.signature.bind(*args, **kwargs)
        except TypeError as exc:
            raise _HTTPError(400, f"Wrong arguments for {name!r}: {exc}.") from None
        wrong = _check_types(task.func, bound)
        if wrong is not None:
            raise _HTTPError(400, f"Wrong arguments for {name!r}: {wrong}.")

        s = store()
        idem_key = idempotency_key(who, name)
        body_hash = hashlib.sha256(json.dumps([args, kwargs], sort_keys=True).encode()).hexdigest()
        # "pending" lives briefly: a submit that dies half-way must not block the key for long.
        if idem_key is not None and not s.backend.add(idem_key, ["pending", body_hash], 30):
            job_id, same_body = wait_idempotent(idem_key, body_hash)
            if not same_body:
                raise _HTTPError(422, "This Idempotency-Key was used with other arguments.")
            return job_response(load(job_id, who), 202)
        try:
            place = limits.reserve_job(s, _digest(who), current_app.config)
        except BaseException:
            forget(idem_key)
            raise
        try:
            job = longtask._submit(task, tuple(args), kwargs, owner=who)
            record = s.read_record(job.id)
        except BaseException as exc:
            forget(idem_key)
            place.cancel()
            if isinstance(exc, QueueFullError):
                raise _HTTPError(503, str(exc), {"Retry-After": str(RETRY_AFTER)}) from None
            if isinstance(exc, TypeError):
                raise _HTTPError(400, str(exc)) from None
            raise
        if record.get("owner") != who:  # a memo hit or a joined in-flight job: let them read it
            place.cancel()  # (and it does not count as theirs)
            s.backend.set(access_key(job.id, who), 1, record.get("expire", s.result_expire))
        else:
            place.keep(job.id, s.result_expire)
        if idem_key is not None:
            s.backend.set(idem_key, [job.id, body_hash], s.result_expire)
        return job_response(record, 202)

    def idempotency_key(who: str, name: str) -> str | None:
        key = request.headers.get("Idempotency-Key")
        if key is None:
            return None
        if not 0 < len(key) <= 255:
            raise _HTTPError(400, "An Idempotency-Key must be 1 to 255 characters.")
        return keys.idempotency(hashlib.sha256("\0".join((who, name, key)).encode()).hexdigest())

    def wait_idempotent(idem_key: str, body_hash: str) -> tuple[str, bool]:
        """The job id the first request with this key made, and whether its body was the same."""
        deadline = time.monotonic() + 10
        while True:
            value = store().backend.get(idem_key)
            if isinstance(value, list) and value[0] != "pending":
                return value[0], value[1] == body_hash
            if isinstance(value, list) and value[1] != body_hash:
                return "", False
            if value is MISSING or time.monotonic() > deadline:
                raise _HTTPError(409, "A request with this Idempotency-Key did not complete; retry it.")
            time.sleep(0.01)

    def forget(idem_key: str | None) -> None:
        if idem_key is not None:
            store().backend.delete(idem_key)

    @bp.route("/jobs/<job_id>", methods=_METHODS)
    def job(job_id: str) -> Response:
        only("GET", "DELETE")
        who = owner()
        record = load(job_id, who)
        if request.method == "DELETE":
            if record.get("owner") != who:  # shared through a memo hit: theirs to read, not to stop
                raise _HTTPError(403, "Only the session that started this job may cancel it.")
            store().cancel(job_id)
            record = store().read_record(job_id)
        return job_response(record)

    @bp.route("/jobs/<job_id>/events", methods=_METHODS)
    def events(job_id: str) -> Response:
        only("GET")
        who = owner()
        record = load(job_id, who)
        try:
            last = int(request.headers.get("Last-Event-ID", "0"))
        except ValueError:
            last = 0
        release: t.Callable[[], None] | None = None
        if JobStatus(record["status"]).is_finished:  # one event, then the end: no limit applies
            timeout = 0.0
        else:
            threaded = bool(request.environ.get("wsgi.multithread"))
            timeout, release = limits.admit_stream(store(), _digest(who), record, current_app.config, threaded)
        response = Response(
            stream_with_context(stream(job_id, last, timeout)),
            mimetype="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )
        if release is not None:
            response.call_on_close(release)  # the server closes it as the stream ends or breaks
        return response

    def stream(job_id: str, last: int, timeout: float) -> t.Iterator[str]:
        # Progress is "latest value wins", numbered by the worker: an event per stored value the
        # client has not seen, so a reconnect with Last-Event-ID resumes without gaps or repeats.
        # The stream ends after `timeout` seconds (LONGTASK_SSE_TIMEOUT, or less where the job's
        # LONGTASK_SSE_WINDOW ends sooner) and the browser reconnects: no thread is held for ever
        # by an idle page.
        s = store()
        yield "retry: 1000\n\n"
        deadline = time.monotonic() + timeout
        quiet_since = time.monotonic()
        delay = 0.02
        while True:
            try:
                record = s.read_record(job_id)
                seq, value = s.read_progress(job_id)
            except JobNotFoundError:
                yield _event("gone", last + 1, {"id": job_id})
                return
            except Exception as exc:  # storage failed, or a value failed its signature check
                # An event that says so, rather than a dropped connection (which the browser
                # would take for a network error, and reconnect at once).
                error = {"status": 500, "message": "Internal server error.", **reported(exc)}
                yield _event("server-error", last + 1, {"error": error})  # (as the API's errors)
                return
            if seq > last:
                last = seq
                yield _event("progress", seq, _jsonable(value)[0])
                quiet_since, delay = time.monotonic(), 0.02
            if JobStatus(record["status"]).is_finished:
                yield _event("status", last + 1, job_json(record))
                return
            now = time.monotonic()
            if now > deadline:
                return
            if now - quiet_since > 15:
                yield ": keep-alive\n\n"
                quiet_since = now
            time.sleep(delay)
            delay = min(delay * 1.5, 0.5)

    @bp.route("/", defaults={"rest": ""}, methods=_METHODS)
    @bp.route("/<path:rest>", methods=_METHODS)
    def not_found(rest: str) -> Response:
        raise _HTTPError(404, "Not found.")

    return bp


def _digest(who: str) -> str:
    """An owner as it appears in keys."""
    return hashlib.sha256(who.encode()).hexdigest()[:32]


def _event(name: str, event_id: int, data: t.Any) -> str:
    return f"id: {event_id}\nevent: {name}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n"
