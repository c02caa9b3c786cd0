"""The jobs dashboard: a blueprint with a page of every job, a page per job, live updates, and
the two writes an operator needs (cancel a job, purge the finished ones). See
:meth:`LongTask.dashboard <flask_longtask.LongTask.dashboard>` and ``docs/dashboard.md``.

Its pages are rendered on the server (Jinja, autoescaped) and work without JavaScript; a small
script of its own (``static/dashboard.js``, no framework, nothing from a CDN) keeps them live:
it opens a Server-Sent Events stream that sends the page's parts again when they change, and
polls the same parts when a stream cannot be had. Who may use it and how its writes are guarded
is in :mod:`.guard`; what it shows, in :mod:`.views`.
"""

from __future__ import annotations

import json
import threading
import time
import typing as t

from flask import (
    Blueprint,
    Response,
    current_app,
    jsonify,
    render_template,
    request,
    stream_with_context,
    url_for,
)
from flask.blueprints import BlueprintSetupState

from .. import listing
from ..exceptions import JobNotFoundError
from ..job import JobStatus
from . import guard, views
from .guard import Refused

if t.TYPE_CHECKING:  # pragma: no cover
    from ..extension import LongTask
    from ..store import JobStore

#: The longest task name a filter accepts.
MAX_TASK: t.Final = 200
#: Seconds a stream stays open before the browser opens another (so no thread is held for ever).
STREAM_LASTS: t.Final = 30.0
_MAX_REFRESH = 60.0
#: A job's page stops following it then.
_ENDED = frozenset({"succeeded", "failed", "cancelled", "gone"})


def check_settings(config: t.Mapping[str, t.Any]) -> None:
    """:raises ValueError: a ``LONGTASK_DASHBOARD_*`` setting out of range (named)."""
    refresh = config["LONGTASK_DASHBOARD_REFRESH"]
    if isinstance(refresh, bool) or not isinstance(refresh, (int, float)) or not 0.1 <= refresh <= _MAX_REFRESH:
        raise ValueError(f"LONGTASK_DASHBOARD_REFRESH must be seconds from 0.1 to 60, not {refresh!r}.")
    streams = config["LONGTASK_DASHBOARD_MAX_STREAMS"]
    if isinstance(streams, bool) or not isinstance(streams, int) or streams < 0:
        raise ValueError(f"LONGTASK_DASHBOARD_MAX_STREAMS must be a whole number, 0 or more, not {streams!r}.")


class _Shared:
    """What one dashboard blueprint keeps in a process: its open streams, its last counts."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.streams = 0
        self.counts: tuple[float, dict[str, int]] | None = None

    def counts_now(self, store: JobStore, fresh_for: float) -> dict[str, int]:
        """:func:`listing.counts`, at most once every ``fresh_for`` seconds for all viewers."""
        held = self.counts
        now = time.monotonic()
        if held is not None and now - held[0] < fresh_for:
            return held[1]
        counts = listing.counts(store)
        self.counts = (now, counts)
        return counts


def make_dashboard(
    longtask: LongTask, url_prefix: str = "/longtask/dashboard", authorize: t.Callable[[], t.Any] | None = None
) -> Blueprint:
    """Build the dashboard for ``longtask``; see :meth:`LongTask.dashboard`."""
    if authorize is not None and not callable(authorize):
        raise TypeError(
            f"authorize must be a function without arguments that returns True to allow, not {authorize!r}."
        )
    bp = Blueprint(
        "longtask_dashboard",
        __name__,
        url_prefix=url_prefix,
        template_folder="templates",
        static_folder="static",
        static_url_path="/static",
    )
    shared = _Shared()
    cookie_path = url_prefix.rstrip("/") or "/"

    @bp.record_once
    def check_app(state: BlueprintSetupState) -> None:
        check_settings({**_defaults(), **state.app.config})

    def store() -> JobStore:
        return longtask._state().store

    def refresh() -> float:
        return float(current_app.config.get("LONGTASK_DASHBOARD_REFRESH", 1.0))

    @bp.before_request
    def authorized() -> None:
        guard.authorized(authorize)

    @bp.errorhandler(Refused)
    def refused(exc: Refused) -> Response:
        if request.path.startswith(f"{cookie_path.rstrip('/')}/api/") or request.method != "GET":
            response = jsonify(error={"status": exc.status, "message": exc.message})
        else:
            response = Response(render_template("longtask_dashboard/refused.html", message=exc.message))
        response.status_code = exc.status
        return guard.secure(response, page=True)

    def filters() -> tuple[str | None, str | None, str | None, str | None]:
        """The page's filters from the query string, checked (``400`` otherwise)."""
        status = request.args.get("status", "") or None
        task = request.args.get("task", "") or None
        search = (request.args.get("q", "") or "").strip().lower() or None
        before = request.args.get("before", "") or None
        if status is not None and status not in {s.value for s in JobStatus}:
            raise Refused(400, "Unknown status.")
        if task is not None and (len(task) > MAX_TASK or not task.isprintable()):
            raise Refused(400, f"A task's name has at most {MAX_TASK} printable characters.")
        if search is not None and not views.SEARCH.fullmatch(search):
            raise Refused(400, "Search for the start of a job id: 1 to 32 hex digits.")
        if before is not None and not listing.JOB_ID.fullmatch(before):
            raise Refused(400, "'before' must be a job id.")
        return status, task, search, before

    def job_id_or_404(job_id: str) -> str:
        if not listing.JOB_ID.fullmatch(job_id):
            raise Refused(404, "No such job.")
        return job_id

    def parts(status: str | None, task: str | None, search: str | None, before: str | None) -> dict[str, t.Any]:
        """The live parts of the jobs page, rendered."""
        page = views.page(store(), status=status, task=task, search=search, before=before)
        counts = shared.counts_now(store(), refresh() / 2)
        return {
            "counts": render_template("longtask_dashboard/_counts.html", counts=counts, filters=page.filters),
            "table": render_template("longtask_dashboard/_table.html", page=page),
        }

    def job_parts(job_id: str) -> dict[str, t.Any]:
        try:
            shown = views.detail(store(), job_id)
        except JobNotFoundError:
            return {"job": render_template("longtask_dashboard/_gone.html", job_id=job_id), "status": "gone"}
        return {"job": render_template("longtask_dashboard/_job.html", job=shown), "status": shown["row"].status}

    def page_response(html: str) -> Response:
        value, new = guard.token()
        response = Response(html)
        if new:
            guard.keep_token(response, value, cookie_path)
        return guard.secure(response, page=True)

    def context() -> dict[str, t.Any]:
        value, _ = guard.token()
        return {"token": value, "refresh": refresh(), "tasks": sorted(longtask._tasks)}

    @bp.get("/")
    def index() -> Response:
        status, task, search, before = filters()
        shown = parts(status, task, search, before)
        return page_response(
            render_template("longtask_dashboard/index.html", parts=shown, **context(), **_f(status, task, search))
        )

    @bp.get("/jobs/<job_id>")
    def job(job_id: str) -> Response:
        job_id = job_id_or_404(job_id)
        shown = job_parts(job_id)
        if shown["status"] == "gone":
            raise Refused(404, f"No job {job_id} (it may have expired or been purged).")
        return page_response(render_template("longtask_dashboard/job.html", job_id=job_id, parts=shown, **context()))

    @bp.get("/api/page")
    def page_json() -> Response:
        return guard.secure(jsonify(parts(*filters())), page=False)

    @bp.get("/api/jobs/<job_id>")
    def job_json(job_id: str) -> Response:
        return guard.secure(jsonify(job_parts(job_id_or_404(job_id))), page=False)

    @bp.get("/api/stream")
    def stream() -> Response:
        job_id = request.args.get("job")
        shown_filters = None if job_id else filters()

        def look() -> dict[str, t.Any]:
            return parts(*shown_filters) if shown_filters is not None else job_parts(job_id_or_404(str(job_id)))

        first = look()  # (checks the parameters before the stream starts)
        release = admit()
        every = refresh()

        def events() -> t.Iterator[str]:
            try:
                yield f"retry: {int(every * 1000)}\n\n"
                last, shown = None, first
                deadline = time.monotonic() + STREAM_LASTS
                while True:
                    data = json.dumps(shown, separators=(",", ":"))
                    if data != last:
                        last = data
                        yield f"event: parts\ndata: {data}\n\n"
                    else:  # (two bytes: a page that has gone is noticed now, and its stream let go)
                        yield ":\n\n"
                    if time.monotonic() + every > deadline or shown.get("status") in _ENDED:
                        return
                    time.sleep(every)
                    shown = look()
            finally:
                release()

        response = Response(stream_with_context(events()), mimetype="text/event-stream")
        response.headers["X-Accel-Buffering"] = "no"
        return guard.secure(response, page=False)

    def admit() -> t.Callable[[], None]:
        """Hold one of this process's streams, or answer ``503`` (the page polls instead)."""
        cap = int(current_app.config.get("LONGTASK_DASHBOARD_MAX_STREAMS", 4))
        if not request.environ.get("wsgi.multithread", False):
            raise Refused(503, "This server answers one request at a time per process: the page polls instead.")
        with shared.lock:
            if shared.streams >= cap:
                raise Refused(503, "This process streams to as many dashboards as it may: the page polls instead.")
            shared.streams += 1
        done = threading.Event()

        def release() -> None:
            if not done.is_set():
                done.set()
                with shared.lock:
                    shared.streams -= 1

        return release

    @bp.get("/metrics")
    def metrics() -> Response:
        try:
            from .. import metrics as exported
        except ImportError as exc:  # (prometheus_client is an optional extra)
            response = Response(f"{exc}\n", status=501, mimetype="text/plain")
        else:
            response = Response(exported.exposition(store()), mimetype=None)
            response.headers["Content-Type"] = exported.CONTENT_TYPE
        return guard.secure(response, page=False)

    @bp.post("/api/jobs/<job_id>/cancel")
    def cancel(job_id: str) -> Response:
        guard.check_write()
        job_id = job_id_or_404(job_id)
        try:
            handle = store().job(job_id)
            before = handle.status
            handle.cancel()
        except JobNotFoundError:
            raise Refused(404, f"No job {job_id}.") from None
        shared.counts = None
        return guard.secure(jsonify(id=job_id, was=before.value, cancel_requested=not before.is_finished), page=False)

    @bp.post("/api/purge")
    def purge() -> Response:
        guard.check_write()
        purged = listing.purge(store())
        shared.counts = None
        return guard.secure(jsonify(purged=purged), page=False)

    @bp.context_processor
    def links() -> dict[str, t.Any]:
        return {"dashboard_url": lambda **args: url_for(".index", **args)}

    return bp


def _f(status: str | None, task: str | None, search: str | None) -> dict[str, str]:
    return {"status": status or "", "task": task or "", "q": search or ""}


def _defaults() -> dict[str, t.Any]:
    from ..config import DEFAULT_CONFIG

    return {k: v for k, v in DEFAULT_CONFIG.items() if k.startswith("LONGTASK_DASHBOARD_")}


__all__ = ["make_dashboard"]
