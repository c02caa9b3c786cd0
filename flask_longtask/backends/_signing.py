"""HMAC-SHA256 signatures of stored values, checked before anything is unpickled.

Shared by the backends that keep pickles where others could write: the diskcache backend signs
every stored value (:mod:`.diskcache.signed`); ``CeleryBackend(serializer="pickle")`` signs the
pickles it keeps in Redis. A signed blob is ``HMAC-SHA256(key, body) + body``.
"""

from __future__ import annotations

import hmac

#: Bytes of the MAC at the start of a signed blob.
MAC_SIZE = 32


def mac_key(secret: str | bytes) -> bytes:
    """The MAC's key, derived from ``secret`` (never the secret itself: an app's ``SECRET_KEY``
    also signs its sessions)."""
    raw = secret.encode() if isinstance(secret, str) else bytes(secret)
    return hmac.digest(raw, b"flask-longtask storage v1", "sha256")


def sign(key: bytes, body: bytes) -> bytes:
    return hmac.digest(key, body, "sha256") + body


def unsign(key: bytes, blob: bytes) -> memoryview | None:
    """The body of a blob :func:`sign` made with ``key``; ``None`` for anything else."""
    view = memoryview(blob)
    if len(view) <= MAC_SIZE:
        return None
    body = view[MAC_SIZE:]
    return body if hmac.compare_digest(hmac.digest(key, body, "sha256"), view[:MAC_SIZE]) else None
