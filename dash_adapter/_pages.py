"""Browser pages: what each has been shown of a job, and which pages share a job.

A page is one load of a Dash app in a browser: the renderer sends the ``endId`` it got with the
page (a token Dash signs) with every request, its polls and its cancels included, and Dash signs
the job handles it gives a page for that page alone. Its id here is a digest of that token.

* **The cursor** of a page and a job: the number of the job's latest report (``set_progress``
  or ``set_props``) the page has been given. A poll gives the page the reports numbered above it,
  then moves it up: each value reaches each page once, and a page that comes late gets the
  latest at its first poll.
* **The subscribers** of a shared job (memoized, or single-flight): the pages that started or
  joined it. A page that cancels it, or starts the callback again (Dash then cancels its old
  job), only leaves it: its own polls end as for a cancelled job, and the job is cancelled when
  the last page leaves. A short lock per job orders joining and leaving, so a page never joins a
  job that the last page to leave is cancelling.
"""

from __future__ import annotations

import contextlib
import hashlib
import secrets
import time
import typing as t

import flask

if t.TYPE_CHECKING:  # pragma: no cover
    from flask_longtask.backends import Backend

CURSOR_KEY = "dash-adapter:cursor:{job}:{page}"
PAGES_KEY = "dash-adapter:pages:{job}"
LOCK_KEY = "dash-adapter:lock:{job}"
#: How long a page's cursor outlives its last poll that moved it.
CURSOR_EXPIRE = 3600.0
#: Seconds a job's lock is held at most (a process that dies holding it).
LOCK_EXPIRE = 10.0


def page_id() -> str:
    """The current request's page (``""`` outside a request, or without an ``endId``)."""
    if not flask.has_request_context():
        return ""
    return hashlib.sha256(flask.request.args.get("endId", "").encode()).hexdigest()[:32]


class Pages(t.TypedDict):
    """The subscribers of a shared job."""

    #: The pages that started or joined it and have not left it.
    joined: list[str]
    #: The pages that left it (their polls end as for a cancelled job).
    left: list[str]


def read(backend: Backend, job_id: str, page: str) -> tuple[int, Pages | None]:
    """``(the page's cursor, the job's subscribers or None if it is not shared)``, in one read."""
    cursor, pages = backend.get_many([CURSOR_KEY.format(job=job_id, page=page), PAGES_KEY.format(job=job_id)])
    return (cursor if isinstance(cursor, int) else 0), (t.cast(Pages, pages) if isinstance(pages, dict) else None)


def move_cursor(backend: Backend, job_id: str, page: str, seq: int) -> None:
    backend.set(CURSOR_KEY.format(job=job_id, page=page), seq, CURSOR_EXPIRE)


@contextlib.contextmanager
def locked(backend: Backend, job_id: str) -> t.Iterator[None]:
    """Hold the job's lock (an atomic ``add``, released with ``delete_if``) inside the block."""
    key, token = LOCK_KEY.format(job=job_id), secrets.token_hex(8)
    deadline = time.monotonic() + LOCK_EXPIRE + 1.0  # by then a holder that died has lost it
    delay = 0.0005
    while not backend.add(key, token, LOCK_EXPIRE):
        if time.monotonic() > deadline:
            raise RuntimeError(f"The lock of job {job_id} stays taken: is the backend's add() atomic?")
        time.sleep(delay)  # another request joins or leaves this job: a few milliseconds
        delay = min(delay * 2, 0.02)
    try:
        yield
    finally:
        backend.delete_if(key, token)


def _pages(backend: Backend, job_id: str) -> Pages:
    pages = backend.get(PAGES_KEY.format(job=job_id))
    return t.cast(Pages, pages) if isinstance(pages, dict) else {"joined": [], "left": []}


def join(backend: Backend, job_id: str, page: str, expire: float) -> None:
    """Add ``page`` to the subscribers of shared job ``job_id`` (call it under :func:`locked`)."""
    pages = _pages(backend, job_id)
    joined = [p for p in pages["joined"] if p != page] + [page]
    left = [p for p in pages["left"] if p != page]
    backend.set(PAGES_KEY.format(job=job_id), {"joined": joined, "left": left}, expire)


def leave(backend: Backend, job_id: str, page: str, expire: float) -> bool:
    """Take ``page`` off the subscribers of ``job_id`` (under :func:`locked`); return whether the
    job is to be cancelled: no page is left, or it is not shared."""
    pages = backend.get(PAGES_KEY.format(job=job_id))
    if not isinstance(pages, dict):
        return True  # not shared: the page that cancels it is its only one
    joined = [p for p in pages["joined"] if p != page]
    left = [p for p in pages["left"] if p != page] + [page]
    backend.set(PAGES_KEY.format(job=job_id), {"joined": joined, "left": left}, expire)
    return not joined
