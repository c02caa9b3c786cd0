"""What the dashboard shows, as plain values for its templates: a page of jobs, a job, counts.

Values from storage are shown, never trusted: every repr is cut short, every number checked.
"""

from __future__ import annotations

import math
import re
import reprlib
import time
import typing as t
from dataclasses import dataclass, field
from datetime import datetime, timezone

from ..attempts import attempt_of, retries_of
from ..backends.base import MISSING
from ..exceptions import JobNotFoundError
from ..job import JobStatus
from ..listing import find, query
from ..store import keys

if t.TYPE_CHECKING:  # pragma: no cover
    from ..store import JobStore

#: A search: the start of a job id (hex digits).
SEARCH: t.Final = re.compile(r"[0-9a-f]{1,32}")
#: Jobs on a page.
PAGE: t.Final = 50
_ACTIVE = (JobStatus.QUEUED.value, JobStatus.RUNNING.value)
_SHORT = reprlib.Repr()
_SHORT.maxstring = _SHORT.maxother = 200
_SHORT.maxlevel, _SHORT.maxlist, _SHORT.maxtuple, _SHORT.maxdict = 3, 10, 10, 10


@dataclass
class Row:
    """One job in the table."""

    id: str
    task: str
    status: str
    created: str
    started: str
    duration: str
    owner: str
    attempt: str
    progress: float | None  # 0..1, when the progress value says
    progress_text: str
    cancellable: bool


@dataclass
class Page:
    rows: list[Row]
    #: The id to ask ``before=`` for the next page, if there may be one.
    next: str | None
    filters: dict[str, str] = field(default_factory=dict)


def shown(value: t.Any, limit: int = 200) -> str:
    """A repr cut short: never long, never an exception."""
    try:
        text = _SHORT.repr(value)
    except Exception:
        return "<cannot be shown>"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def fraction(value: t.Any) -> float | None:
    """How far a job is, 0 to 1, when its progress value says: a number from 0 to 1, ``(done,
    total)``, or a dict with ``done``/``current`` and ``total``, or ``percent``."""

    def number(x: t.Any) -> float | None:
        return float(x) if isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) else None

    done = total = None
    if isinstance(value, (tuple, list)) and len(value) == 2:
        done, total = number(value[0]), number(value[1])
    elif isinstance(value, dict):
        if "percent" in value and number(value["percent"]) is not None:
            done, total = number(value["percent"]), 100.0
        else:
            done, total = number(value.get("done", value.get("current"))), number(value.get("total"))
    elif number(value) is not None and 0 <= t.cast(float, number(value)) <= 1:
        return number(value)
    if done is None or total is None or total <= 0:
        return None
    return min(max(done / total, 0.0), 1.0)


def when(stamp: t.Any, form: str = "%Y-%m-%d %H:%M:%S") -> str:
    """An epoch time as ``2026-12-02 22:18:41`` (UTC; or as ``form`` says), or ``""``."""
    if not isinstance(stamp, (int, float)) or isinstance(stamp, bool) or not math.isfinite(stamp):
        return ""
    return datetime.fromtimestamp(stamp, timezone.utc).strftime(form)


def iso(stamp: t.Any) -> str:
    return "" if not when(stamp) else datetime.fromtimestamp(stamp, timezone.utc).isoformat()


def duration(record: t.Mapping[str, t.Any], now: float) -> str:
    """How long it ran (or has run so far), in words a table can hold."""
    started, finished = record.get("started"), record.get("finished")
    if not isinstance(started, (int, float)) or isinstance(started, bool):
        return ""
    end = finished if isinstance(finished, (int, float)) and not isinstance(finished, bool) else now
    return seconds(max(end - started, 0.0))


def seconds(value: float) -> str:
    if not math.isfinite(value):
        return ""
    if value < 1:
        return f"{value * 1000:.0f} ms"
    if value < 60:
        return f"{value:.1f} s"
    if value < 3600:
        return f"{int(value // 60)} min {int(value % 60)} s"
    return f"{int(value // 3600)} h {int(value % 3600 // 60)} min"


def _progress(store: JobStore, records: list[dict[str, t.Any]]) -> dict[str, t.Any]:
    """The latest progress value of each job (one read for all): what was stored, or
    :data:`MISSING` for a value that cannot be loaded."""
    ids = [record["id"] for record in records]
    values = store.backend.get_many([keys.progress(job_id) for job_id in ids]) if ids else []
    out = {}
    for job_id, stored in zip(ids, values, strict=True):
        if isinstance(stored, dict) and isinstance(stored.get("value"), bytes):
            try:
                out[job_id] = store.backend.loads(stored["value"])
            except Exception:
                out[job_id] = MISSING
    return out


def row(record: dict[str, t.Any], progress: t.Any, now: float) -> Row:
    status = str(record.get("status"))
    value = None if progress is MISSING else progress
    share = fraction(value)
    if status == JobStatus.SUCCEEDED.value and value is None:
        share = 1.0
    return Row(
        id=str(record["id"]),
        task=str(record.get("task")),
        status=status,
        created=when(record.get("created")),
        started=when(record.get("started"), "%H:%M:%S"),
        duration=duration(record, now),
        owner=str(record.get("owner") or ""),
        attempt=f"{attempt_of(record)}/{1 + retries_of(record)}",
        progress=share,
        progress_text="" if value is None else ("<cannot be read>" if progress is MISSING else shown(value, 60)),
        cancellable=status in _ACTIVE,
    )


def page(store: JobStore, *, status: str | None, task: str | None, search: str | None, before: str | None) -> Page:
    """A page of the table: the jobs that match, newest first, from ``before`` on.

    ``search``: the start of a job id. Ids begin with their time, so the jobs it names are a
    stretch of the index: from the job ids just below ``search + "g"``, down to ``search``.
    """
    since = None
    top = before
    if search:
        prefix = search[:12].ljust(12, "0")
        since = int(prefix, 16) / 1000  # (the index stops a minute below, see JobQuery.lowest_id)
        bound = search + "g"  # (after every id that starts with it)
        top = bound if before is None or before > bound else before
    wanted_query, wanted = query(status=status or None, task=task or None, since=since, before=top, limit=PAGE)
    records = find(store, wanted_query, wanted)
    if search:
        records = [record for record in records if record["id"].startswith(search)]
    now = time.time()
    values = _progress(store, records)
    rows = [row(record, values.get(record["id"]), now) for record in records]
    more = len(rows) == PAGE
    filters = {"status": status or "", "task": task or "", "q": search or ""}
    return Page(rows, rows[-1].id if more else None, filters)


def detail(store: JobStore, job_id: str) -> dict[str, t.Any]:
    """Everything the job's page shows.

    :raises JobNotFoundError: no such job (or it expired).
    """
    record = store.read_record(job_id)
    now = time.time()
    progress = _progress(store, [record]).get(job_id)
    status = str(record.get("status"))
    result = None
    if status == JobStatus.SUCCEEDED.value:
        try:
            result = shown(store.read_result(job_id), 500)
        except JobNotFoundError:
            result = "(expired)"
        except Exception as exc:
            result = f"<cannot be read: {type(exc).__name__}>"
    error = record.get("error") if isinstance(record.get("error"), dict) else None
    last = record.get("last_error") if isinstance(record.get("last_error"), dict) else None
    timeline = [("submitted", record.get("created")), ("started", record.get("started"))]
    if isinstance(record.get("retry_at"), (int, float)) and status in _ACTIVE:
        timeline.append(("retry due", record.get("retry_at")))
    timeline.append((status if status not in _ACTIVE else "", record.get("finished")))
    return {
        "row": row(record, progress, now),
        "arguments": str(record.get("shown") or ""),
        "result": result,
        "error": _error(error),
        "last_error": _error(last),
        "time_limit": seconds(float(record["time_limit"])) if _positive(record.get("time_limit")) else "",
        "timeline": [(name, when(stamp), iso(stamp)) for name, stamp in timeline if name and when(stamp)],
        "memo_key": bool(record.get("memo_key")),
        "cancel_requested": store.is_cancel_requested(job_id) if status in _ACTIVE else False,
    }


def _error(error: dict[str, t.Any] | None) -> dict[str, str] | None:
    if error is None:
        return None
    return {name: str(error.get(name) or "") for name in ("type", "message", "traceback")}


def _positive(value: t.Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and 0 < value < math.inf
