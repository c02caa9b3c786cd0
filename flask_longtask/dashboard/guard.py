"""Who may use the dashboard, and how its two writes (cancel, purge) are kept from other sites.

**Authorization.** ``authorize`` (a callable without arguments, reading ``flask.request`` or
your login's ``current_user``) runs before every request to the dashboard, its static files and
its metrics included; anything but a true value answers ``403``. Without one the dashboard
answers ``403`` unless the app runs in debug mode, and its page says why.

**Cross-site requests.** Cancelling a job and purging the finished ones are ``POST`` requests,
and each must pass three checks, any one of which stops a forged request from another site:

1. The body is JSON (``Content-Type: application/json``). A cross-site ``<form>`` cannot send
   that type, and a cross-site ``fetch`` with it must first pass a CORS preflight, which the
   dashboard never answers with permission.
2. The browser's own word on where the request comes from: ``Sec-Fetch-Site`` must be
   ``same-origin`` when the browser sends it, and ``Origin``, when sent, must be this server's.
3. A token: a random value the dashboard sets in an ``HttpOnly``, ``SameSite=Strict`` cookie
   scoped to its prefix, and writes into each page it serves; the page's script sends it back in
   the ``X-LongTask-CSRF`` header, and the two must be equal (compared in constant time). Another
   site can neither read the page nor set a header on a cross-site request.

Every answer carries ``Cache-Control: no-store`` (job data stays out of shared caches), and the
pages a ``Content-Security-Policy`` that allows scripts and styles from the dashboard only and
forbids framing it (no other site can overlay its buttons: clickjacking).
"""

from __future__ import annotations

import hmac
import secrets
import typing as t

from flask import Response, current_app, g, request

#: The name of the cookie that holds the token, and of the header that must repeat it.
COOKIE: t.Final = "longtask_dashboard_csrf"
HEADER: t.Final = "X-LongTask-CSRF"
#: Applied to every HTML page of the dashboard.
CSP: t.Final = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self';"
    " frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
)


class Refused(Exception):
    """A request the dashboard will not serve: ``status`` and why."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status, self.message = status, message


def authorized(authorize: t.Callable[[], t.Any] | None) -> None:
    """Run ``authorize`` for the current request.

    :raises Refused: ``403``: it said no, or there is none and the app is not in debug mode.
    """
    if authorize is None:
        if current_app.debug:
            return
        raise Refused(
            403,
            "The Flask-LongTask dashboard answers only requests its 'authorize' function allows:"
            " pass longtask.dashboard(authorize=...), a function that returns True for the"
            " people who may see and steer every job. Without one it serves nobody, except in"
            " debug mode.",
        )
    if not authorize():
        raise Refused(403, "You may not use this dashboard.")


def token() -> tuple[str, bool]:
    """The request's token (from its cookie), and whether it is new (to be set as a cookie):
    the same for the whole request."""
    known = g.get("_longtask_token")
    if known is not None:
        return t.cast("tuple[str, bool]", known)
    held = request.cookies.get(COOKIE, "")
    made = (held, False) if len(held) == 43 and held.replace("-", "").replace("_", "").isalnum() else None
    made = made or (secrets.token_urlsafe(32), True)
    g._longtask_token = made
    return made


def keep_token(response: Response, value: str, path: str) -> None:
    """Set the token's cookie on ``response``."""
    response.set_cookie(
        COOKIE, value, path=path, httponly=True, samesite="Strict", secure=request.is_secure, max_age=12 * 3600
    )


def check_write() -> None:
    """The three checks of a cancel or a purge (see the module's docstring).

    :raises Refused: ``415`` (not JSON) or ``403`` (another site, or no token).
    """
    if request.mimetype != "application/json":
        raise Refused(415, "Send it as JSON (Content-Type: application/json).")
    site = request.headers.get("Sec-Fetch-Site")
    if site is not None and site != "same-origin":
        raise Refused(403, "Refused: the request comes from another site.")
    origin = request.headers.get("Origin")
    if origin is not None and origin.rstrip("/") != request.host_url.rstrip("/"):
        raise Refused(403, "Refused: the request comes from another origin.")
    held, sent = request.cookies.get(COOKIE, ""), request.headers.get(HEADER, "")
    if not held or not hmac.compare_digest(held.encode(), sent.encode()):
        raise Refused(403, "Refused: the page's token is missing or wrong; reload the page.")


def secure(response: Response, *, page: bool) -> Response:
    response.headers["Cache-Control"] = "no-store"
    response.headers["X-Content-Type-Options"] = "nosniff"
    if page:
        response.headers["Content-Security-Policy"] = CSP
        response.headers["X-Frame-Options"] = "DENY"
    return response
