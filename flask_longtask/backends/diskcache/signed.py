"""Every value read back from the directory is checked before it is unpickled.

Whoever can write ``cache.db`` could otherwise have the app unpickle what they wrote (and a
pickle runs code). So :class:`SignedDisk` stores every value as one blob (in its row, or in a
value file from 1 MiB)::

    HMAC-SHA256(key, kind + payload)  kind  payload      (kind: b"B" bytes, b"P" a pickle)

and checks the MAC before it looks at the payload: a value written without the key (or with
another one), or in any other form (a plain string or number, a pickle written by diskcache
itself), raises :class:`TamperedValueError` and is never unpickled. A forger cannot make one;
they could only copy one this app wrote from one key to another. Value files are read or
deleted only when named as diskcache names them (``ab/cd/<28 hex>.val``): a forged row cannot
point elsewhere. Bytes inside a signed value (a job's pickled arguments, its result) are covered
by its MAC; the core unpickles them only after this check.

The key is derived from a secret (``_signing.mac_key``): ``LONGTASK_SECRET_KEY``, else the
app's ``SECRET_KEY``, else 32 random bytes in a file next to the directory (``<directory>.key``,
``0600``, made once, atomically, by the first process that needs it: :func:`key_file_secret`).
Every process that opens the directory must use the same secret; the pool's host hands its own
to the workers it starts, so a worker's app need not configure it.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import re
import stat
import typing as t

from ...exceptions import LongTaskError, TamperedValueError
from .._signing import sign, unsign
from .private import PrivateDisk

#: diskcache's modes (``diskcache.core``) of the values this disk writes: a blob in the row, or
#: in a file of its own (1 MiB and more). (It never writes the others: text files, pickles.)
MODE_RAW, MODE_BINARY = 1, 2
_FILENAME = re.compile(r"[0-9a-f]{2}/[0-9a-f]{2}/[0-9a-f]{28}\.val")


def key_file(directory: str) -> str:
    return directory.rstrip(os.sep) + ".key"


def key_file_secret(directory: str) -> bytes:
    """The random secret kept in ``<directory>.key``, made now if there is none. It is refused if
    it belongs to another user, is readable or writable by others, or is not 32 bytes."""
    path = key_file(directory)
    if not os.path.exists(path):
        temporary = f"{path}.{os.getpid()}.{os.urandom(4).hex()}"
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
        try:
            os.write(fd, os.urandom(32))
        finally:
            os.close(fd)
        try:
            with contextlib.suppress(FileExistsError):  # (another process made it first: theirs holds)
                os.link(temporary, path)  # whole, or not there: never half written
        finally:
            os.unlink(temporary)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
    except OSError as exc:
        raise LongTaskError(f"The storage key {path!r} cannot be read ({exc}).") from exc
    try:
        info = os.fstat(fd)
        secret = os.read(fd, 64)
    finally:
        os.close(fd)
    if info.st_uid != os.geteuid() or info.st_mode & 0o077 or not stat.S_ISREG(info.st_mode) or len(secret) != 32:
        raise LongTaskError(
            f"The storage key {path!r} is not this user's private key (owner uid {info.st_uid}, mode"
            f" {stat.S_IMODE(info.st_mode):o}, {len(secret)} bytes): whoever made it could forge the"
            " values this app unpickles. Remove it (a new one is made), or set LONGTASK_SECRET_KEY."
        )
    return secret


def disk_with(key: bytes) -> type[SignedDisk]:
    """A :class:`SignedDisk` class for ``key`` (``_signing.mac_key``'s): diskcache's ``Cache`` wants
    a class, which it makes its disk from."""
    return type("SignedDisk", (SignedDisk,), {"key": key})


class SignedDisk(PrivateDisk):
    """diskcache's ``Disk`` whose values are signed on the way in and checked on the way out
    (see the module), with the class's ``key`` (:func:`disk_with`)."""

    key: t.ClassVar[bytes]

    def __init__(self, directory: str, **settings: t.Any) -> None:
        super().__init__(directory, **settings)
        self._key = self.key
        self._directory_name = directory

    def store(self, value: t.Any, read: bool, key: t.Any = None) -> tuple[t.Any, ...]:
        if read:
            raise TypeError("SignedDisk stores no file objects")
        body = b"B" + value if type(value) is bytes else b"P" + pickle.dumps(value, protocol=self.pickle_protocol)
        signed = sign(self._key, body)
        return t.cast("tuple[t.Any, ...]", super().store(signed, False, key=key))  # (bytes: a blob or a file)

    def fetch(self, mode: int, filename: str | None, value: t.Any, read: bool) -> t.Any:
        if mode == MODE_RAW and isinstance(value, bytes):
            return self._check(value)
        if mode == MODE_BINARY and not read:
            if not _FILENAME.fullmatch(filename or ""):
                raise self._tampered(f"a value file named {filename!r}")
            return self._check(super().fetch(mode, filename, value, False))
        raise self._tampered("a value this backend never writes (unsigned)")

    def get(self, key: t.Any, raw: bool) -> t.Any:
        """A key of diskcache's ``Cache`` (the mailbox's: integers): never a pickle."""
        if not raw:
            raise self._tampered("a pickled key, which this backend never writes")
        return super().get(key, raw)

    def remove(self, file_path: str) -> None:
        if _FILENAME.fullmatch(file_path or ""):
            super().remove(file_path)

    def _check(self, blob: bytes) -> t.Any:
        body = unsign(self._key, blob)
        if body is None:
            raise self._tampered("a value whose signature does not match")
        kind, payload = body[0], body[1:]
        if kind == ord("B"):
            return bytes(payload)
        if kind == ord("P"):
            return pickle.loads(payload)
        raise self._tampered("a signed value of an unknown kind")

    def _tampered(self, what: str) -> TamperedValueError:
        return TamperedValueError(
            f"Refused to read {what} from {self._directory_name!r}: it was not written by this app"
            " with its key (another LONGTASK_SECRET_KEY or SECRET_KEY, a directory from an older"
            " version, or tampering). Nothing of it was unpickled."
        )
