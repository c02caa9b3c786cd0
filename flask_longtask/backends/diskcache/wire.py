"""Every message of the diskcache pool, with its encoding, in one place.

Two channels carry them (``docs/internals.md`` tells the whole story, message by message):

**A worker's pipe** (a ``multiprocess`` duplex pipe, each message framed by ``send_bytes``: a
4-byte length, then the bytes). From the host to a worker:

=================  ====================================================================
:class:`Run`       the id of a job from the queue: claim it and run it (or, while a job
                   runs, a job *sent ahead*: claim it as that job ends)
:class:`Handover`  ``P`` + pickle: a job submitted in the host's process, claimed for the
                   worker while its records are written; wait for :class:`Go`
:class:`Go`        ``G`` (its records are stored: run it) or ``N`` (they are not: drop it)
=================  ====================================================================

From a worker to the host:

=================  ====================================================================
:class:`Done`      ``E`` + pickle: done with a job; what its end wrote (for waiters), and
                   the job sent ahead that it claimed as it ended this one, if any
:class:`GiveBack`  ``R`` + ids: jobs sent ahead that it gives back (its job runs long)
:class:`Failing`   ``!`` + reason: it could not store an outcome, and exits
:class:`Draining`  ``D`` + reason: a worker of coroutine jobs whose cancelled coroutine
                   went on past its grace: send it no more jobs, retire it once idle
=================  ====================================================================

**The FIFO** ``pool.fifo``, from any process on the host to the host: one ASCII line per
message, written atomically (at most ``PIPE_BUF`` bytes), or left in the mailbox in storage
when the FIFO is full: :class:`Queued` (``q <id>``, ``q <id> a`` for a coroutine job),
:class:`Later` (``l <id> <due>``, ``l <id> <due> a``),
:class:`Kill` (``k <id> <deadline>``), :class:`Ended` (``e <id>``), :class:`StartFailed`
(``s <pid> <hex>``, from a worker process that fails while it imports the app). Lines are untrusted (any
process that can write the directory can write them): :func:`decode_line` validates each and
returns ``None`` for anything else.
"""

from __future__ import annotations

import binascii
import json
import math
import os
import pickle
import string
import typing as t
from dataclasses import dataclass

_PROTOCOL = pickle.HIGHEST_PROTOCOL
_HEX = frozenset(string.hexdigits)

# -- host -> worker -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Run:
    """Claim and run this job (from the queue), or claim it as the running job ends (ahead)."""

    job_id: str

    def encode(self) -> bytes:
        return self.job_id.encode()


@dataclass(frozen=True)
class Handover:
    """A job claimed for the worker while its records are written, with what it needs to run:
    its claim's time, its record, and its request (``None`` when large: the worker reads it)."""

    job_id: str
    started: float
    record: dict[str, t.Any]
    request: dict[str, t.Any] | None

    def encode(self) -> bytes:
        return b"P" + pickle.dumps((self.job_id, self.started, self.record, self.request), _PROTOCOL)


@dataclass(frozen=True)
class Go:
    """Whether to run the job of the last :class:`Handover` (its records were stored)."""

    start: bool

    def encode(self) -> bytes:
        return b"G" if self.start else b"N"


def decode_to_worker(data: bytes) -> Run | Handover | Go:
    """A message from the host, as a worker reads it."""
    if data[:1] == b"P":
        job_id, started, record, request = pickle.loads(data[1:])
        return Handover(job_id, started, record, request)
    if data in (b"G", b"N"):
        return Go(data == b"G")
    return Run(data.decode())


# -- worker -> host -------------------------------------------------------------------------------

#: The largest :class:`Done` that carries what the job's end wrote; a larger one carries the
#: job id alone, and a waiter reads the result from storage.
END_INLINE = 16 * 1024


@dataclass(frozen=True)
class Done:
    """Done with ``job_id``. ``values``: what its end wrote (``{key: value}``), or ``None``
    (ended elsewhere, or too large to send). ``ahead``: ``(next job id, whether it runs it)``
    for a job sent ahead that it claimed, or tried to, as it ended this one. ``again``: the
    attempt failed and the job was queued to run again (a retry): not an end."""

    job_id: str
    values: dict[str, t.Any] | None = None
    ahead: tuple[str, bool] | None = None
    again: bool = False

    def encode(self) -> bytes:
        values = self.values
        if values is not None and sum(len(v) for v in values.values() if isinstance(v, bytes)) >= END_INLINE:
            values = None  # (a large result is not even pickled to see that it is)
        data = b"E" + pickle.dumps((self.job_id, values, self.ahead, self.again), _PROTOCOL)
        if len(data) > END_INLINE:
            data = b"E" + pickle.dumps((self.job_id, None, self.ahead, self.again), _PROTOCOL)
        return data


@dataclass(frozen=True)
class GiveBack:
    """Jobs sent ahead that the worker gives back, unclaimed, in the order it was sent them."""

    job_ids: tuple[str, ...]

    def encode(self) -> bytes:
        return b"R" + " ".join(self.job_ids).encode()


@dataclass(frozen=True)
class Failing:
    """The worker could not store an outcome (``reason``), and exits."""

    reason: str

    def encode(self) -> bytes:
        return b"!" + self.reason.encode()


@dataclass(frozen=True)
class Draining:
    """A worker of coroutine jobs whose cancelled coroutine went on past its grace (``reason``):
    send it no more jobs; it is retired once those it runs have ended (the leftover with it)."""

    reason: str

    def encode(self) -> bytes:
        return b"D" + self.reason.encode()


def decode_from_worker(data: bytes) -> Done | GiveBack | Failing | Draining:
    """A message from a worker, as the host reads it. A worker is a child of the host, and
    pickles plain data; a message that cannot be read raises ``ValueError``."""
    kind = data[:1]
    if kind == b"!":
        return Failing(data[1:].decode("utf-8", "replace"))
    if kind == b"D":
        return Draining(data[1:].decode("utf-8", "replace"))
    if kind == b"R":
        return GiveBack(tuple(raw.decode() for raw in data[1:].split()))
    if kind == b"E":
        try:
            job_id, values, ahead, again = pickle.loads(data[1:])
        except Exception as exc:
            raise ValueError(f"a pool worker's done message could not be read: {exc}") from exc
        return Done(job_id, values, None if ahead is None else (ahead[0], bool(ahead[1])), bool(again))
    raise ValueError(f"unknown message from a pool worker: {data[:16]!r}")


def framed_size(message: Run | Handover | Go) -> int:
    """Its size in a pipe: the 4-byte length ``send_bytes`` frames it with, and its bytes."""
    return 4 + len(message.encode())


class Frames:
    """The messages of a pipe read whole where ``recv_bytes`` would make two system calls
    (length, then bytes): ``recv`` reads what is there in one, and keeps what follows."""

    __slots__ = ("fd", "pending")

    def __init__(self, fd: int) -> None:
        self.fd = fd
        #: Bytes read beyond the last whole message.
        self.pending = b""

    def has_message(self) -> bool:
        """Whether a whole message was read already (``recv`` returns it without a system call)."""
        buf = self.pending
        return len(buf) >= 4 and len(buf) >= 4 + int.from_bytes(buf[:4], "big", signed=True)

    def recv(self) -> bytes:
        """The next message; blocks for the rest of one that is not all there.

        :raises EOFError: the other end is closed (the worker died).
        """
        buf = self.pending
        while True:
            if len(buf) >= 4:
                end = 4 + int.from_bytes(buf[:4], "big", signed=True)
                if len(buf) >= end >= 4:
                    self.pending = buf[end:]
                    return buf[4:end]
                if end < 4:  # pragma: no cover - a worker's messages are far below 2 GiB
                    raise OSError("a pool worker sent a malformed message")
            chunk = os.read(self.fd, 65536)
            if not chunk:
                raise EOFError
            buf += chunk


# -- any process -> host (the FIFO) ---------------------------------------------------------------


@dataclass(frozen=True)
class Queued:
    """A job was queued (its records are stored); ``coroutine``: of an ``async def`` task,
    run by a worker of coroutine jobs (``q <id> a``)."""

    job_id: str
    coroutine: bool = False

    def encode(self) -> bytes:
        return f"q {self.job_id}{' a' if self.coroutine else ''}\n".encode("ascii")


@dataclass(frozen=True)
class Later:
    """Queue this job at ``due`` (epoch seconds): a retry, after its backoff."""

    job_id: str
    due: float
    coroutine: bool = False

    def encode(self) -> bytes:
        return f"l {self.job_id} {self.due:.3f}{' a' if self.coroutine else ''}\n".encode("ascii")


@dataclass(frozen=True)
class Kill:
    """End this job by force if it still runs at ``deadline`` (epoch seconds)."""

    job_id: str
    deadline: float

    def encode(self) -> bytes:
        return f"k {self.job_id} {self.deadline:.3f}\n".encode("ascii")


@dataclass(frozen=True)
class Ended:
    """Another process ended this job (a cancel while it was queued): wake its waiters."""

    job_id: str

    def encode(self) -> bytes:
        return f"e {self.job_id}\n".encode("ascii")


@dataclass(frozen=True)
class StartFailed:
    """Worker process ``pid`` failed as it started, while it imported the app (the user's
    script, imported again as ``__mp_main__``), before its pipe to the host was open: with
    ``error`` (``type`` and ``message``), which the job sent to it fails with. Best effort: sent
    from its ``sys.excepthook`` (see :mod:`.starting`)."""

    pid: int
    error: dict[str, str]

    def encode(self) -> bytes:
        error = {"type": str(self.error.get("type", ""))[:200], "message": str(self.error.get("message", ""))}
        while True:  # (one atomic write: under PIPE_BUF, the message cut short if need be)
            line = f"s {self.pid} {binascii.hexlify(json.dumps(error).encode()).decode()}\n".encode("ascii")
            if len(line) <= START_FAILED_MAX:
                return line
            error["message"] = error["message"][: len(error["message"]) * 3 // 4 - 1] + "…"


#: The longest :class:`StartFailed` line (``PIPE_BUF`` is at least 4096 on Linux; 512 by POSIX,
#: where the line may then be split: the host drops what it cannot decode).
START_FAILED_MAX = 4000

Line = Queued | Later | Kill | Ended | StartFailed


def _job_id(text: str) -> str | None:
    return text if 0 < len(text) <= 64 and _HEX.issuperset(text) else None


def decode_line(line: bytes) -> Line | None:
    """A FIFO line (without its newline) as a message; ``None`` if it is not a valid one."""
    parts = line.decode("ascii", "replace").split()
    if len(parts) == 3 and parts[0] == "s":
        return _start_failed(parts[1], parts[2])
    if len(parts) < 2 or (job_id := _job_id(parts[1])) is None:
        return None
    coroutine = parts[-1] == "a" and parts[0] in ("q", "l")
    if coroutine:  # (the flag of a coroutine job's line)
        parts = parts[:-1]
    if parts[0] == "q" and len(parts) == 2:
        return Queued(job_id, coroutine)
    if parts[0] == "e" and len(parts) == 2:
        return Ended(job_id)
    if parts[0] in ("k", "l") and len(parts) == 3:
        try:
            when = float(parts[2])
        except ValueError:
            return None
        if not math.isfinite(when):
            return None
        return Kill(job_id, when) if parts[0] == "k" else Later(job_id, when, coroutine)
    return None


def _start_failed(pid: str, data: str) -> StartFailed | None:
    if not (pid.isascii() and pid.isdigit() and 0 < len(pid) < 10 and int(pid) > 0):
        return None
    try:
        error = json.loads(binascii.unhexlify(data).decode())
    except (ValueError, UnicodeDecodeError):
        return None
    if not (isinstance(error, dict) and all(isinstance(error.get(k), str) for k in ("type", "message"))):
        return None
    return StartFailed(int(pid), {"type": error["type"], "message": error["message"]})
