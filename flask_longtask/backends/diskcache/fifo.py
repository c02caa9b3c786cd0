"""How the other processes of the host reach the pool's host: the FIFO ``pool.fifo`` (with
the mailbox in storage for when it is full), and the file ``pool.queued`` that tells them the
length of its queue."""

from __future__ import annotations

import errno
import logging
import os
import stat
import threading
import time
import typing as t

from ...exceptions import TamperedValueError
from . import wire

if t.TYPE_CHECKING:  # pragma: no cover
    import diskcache

_log = logging.getLogger(__name__)

FIFO_NAME = "pool.fifo"
#: The host keeps the length of its queue here, for ``queue_length()`` in other processes.
QUEUED_NAME = "pool.queued"
#: Messages that could not be written to the FIFO (full) wait here, in storage.
MAILBOX = "_lt-mail"
#: Seconds between rewrites of the queue's length while it changes (see QueueCount.publish).
PUBLISH_EVERY = 0.01


class FifoReader:
    """The host's end of the FIFO: the lines other processes wrote, as messages."""

    def __init__(self, directory: str) -> None:
        path = os.path.join(directory, FIFO_NAME)
        try:
            os.mkfifo(path, 0o600)
        except FileExistsError:
            if not stat.S_ISFIFO(os.stat(path).st_mode):
                os.unlink(path)
                os.mkfifo(path, 0o600)
        self.fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
        # Our own writer keeps the pipe from reporting end-of-file whenever the last client closes.
        self._keep = os.open(path, os.O_WRONLY | os.O_NONBLOCK)
        self._buffer = b""

    def read(self) -> list[wire.Line]:
        """The whole lines written since the last call (a partial one waits for its end)."""
        while True:
            try:
                chunk = os.read(self.fd, 65536)
            except BlockingIOError:
                break
            if not chunk:
                break
            self._buffer += chunk
        *lines, self._buffer = self._buffer.split(b"\n")
        return _decode(lines)

    def close(self) -> None:
        for fd in (self.fd, self._keep):
            try:
                os.close(fd)
            except OSError:
                pass


def read_mailbox(cache: diskcache.Cache) -> list[wire.Line]:
    """The messages left in storage because the FIFO was full, taken out of it."""
    lines: list[bytes] = []
    while True:
        try:
            _, line = cache.pull(prefix=MAILBOX)
        except TamperedValueError as exc:  # (taken out of the mailbox already: the others stay ours)
            _log.error("Worker pool: %s", exc)
            continue
        if line is None:
            return _decode(lines)
        lines.append(line)


def _decode(lines: list[bytes]) -> list[wire.Line]:
    messages = []
    for line in lines:
        message = wire.decode_line(line)
        if message is not None:
            messages.append(message)
        elif line.strip():
            _log.warning("Worker pool: ignored a malformed message %r.", line[:100])
    return messages


class FifoClient:
    """Sends messages to whichever process hosts the pool of a directory."""

    def __init__(self, directory: str, cache: t.Callable[[], diskcache.Cache]) -> None:
        self._path = os.path.join(directory, FIFO_NAME)
        self._cache = cache
        self._fd: int | None = None
        self._lock = threading.Lock()

    def reset(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            try:
                os.close(fd)
            except OSError:
                pass

    def send(self, message: wire.Line) -> bool:
        """Deliver ``message``; ``False`` when no host is listening (nothing to do then)."""
        data = message.encode()
        with self._lock:
            for _ in range(2):
                if self._fd is None:
                    try:
                        self._fd = os.open(self._path, os.O_WRONLY | os.O_NONBLOCK)
                    except OSError as exc:
                        if exc.errno in (errno.ENXIO, errno.ENOENT):
                            return False  # no host yet: the next one finds queued jobs in storage
                        raise
                try:
                    os.write(self._fd, data)
                    return True
                except BlockingIOError:  # the host is behind: leave the message in storage
                    self._cache().push(data, prefix=MAILBOX)
                    return True
                except BrokenPipeError:  # the host died since we opened it
                    self.reset()
            return False


class QueueCount:
    """The host's side of ``pool.queued``: the queue's length, rewritten as it changes."""

    def __init__(self, directory: str) -> None:
        self._fd = os.open(os.path.join(directory, QUEUED_NAME), os.O_RDWR | os.O_CREAT, 0o600)
        self._published = -1
        self._next = 0.0

    def publish(self, queued: int) -> None:
        """Write ``queued`` if it changed: at once when the queue empties or stops being empty,
        else at most every :data:`PUBLISH_EVERY` seconds (a busy queue changes with every job;
        the host publishes what is left each tick)."""
        if queued == self._published:
            return
        now = time.monotonic()
        if queued and self._published > 0 and now < self._next:
            return
        self._published, self._next = queued, now + PUBLISH_EVERY
        os.pwrite(self._fd, f"{queued:<20}\n".encode(), 0)

    def close(self, *, clear: bool = True) -> None:
        """Stop publishing; ``clear``: no host, no count."""
        try:
            if clear:
                os.ftruncate(self._fd, 0)
            os.close(self._fd)
        except OSError:
            pass


def read_queued(directory: str) -> int | None:
    """The length of the host's queue, as it last published it; ``None`` while no host runs."""
    try:
        with open(os.path.join(directory, QUEUED_NAME), "rb") as f:
            text = f.read(64).strip()
    except FileNotFoundError:
        return None
    return int(text) if text.isdigit() and len(text) < 19 else None
