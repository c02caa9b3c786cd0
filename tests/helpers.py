"""Shared test helpers: wait on conditions with deadlines, never bare sleeps."""

from __future__ import annotations

import os
import time
import typing as t
from pathlib import Path


def wait_for(condition: t.Callable[[], t.Any], timeout: float = 10.0, what: str = "condition") -> t.Any:
    """Poll ``condition`` until it returns a truthy value; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    delay = 0.001
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"Timed out after {timeout}s waiting for {what}")
        time.sleep(delay)
        delay = min(delay * 2, 0.05)


def alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie nobody has reaped yet counts as gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):  # (gone, or going as it is read: ESRCH)
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


#: Where :func:`log_retrying` writes each job's ``job_retrying`` signals, by job id: a task that
#: wants them seen sets its own (``retrying_log``), in the process that runs it.
retrying_logs: dict[str, str] = {}


def retrying_log(job_id: str | None, path: str | None) -> None:
    """Have :func:`log_retrying` write the ``job_retrying`` signals of job ``job_id`` to ``path``."""
    if job_id is not None and path is not None:
        retrying_logs[job_id] = path


def log_retrying(sender: t.Any, job: t.Any, error: dict[str, str], attempt: int, **kwargs: t.Any) -> None:
    """A ``job_retrying`` receiver for task modules that workers import: it appends
    ``"<pid> <attempt> <error message>"`` to the file the job's task named, so that a test sees
    what a worker process sent."""
    path = retrying_logs.get(job.id)
    if path is not None:
        with open(path, "a") as f:
            f.write(f"{os.getpid()} {attempt} {error['message']}\n")


def retrying_lines(path: Path) -> list[tuple[int, int, str]]:
    """What :func:`log_retrying` wrote to ``path``: ``(pid, attempt, message)`` per signal."""
    lines = path.read_text().splitlines() if path.exists() else []
    return [(int(pid), int(attempt), message) for pid, attempt, message in (line.split(" ", 2) for line in lines)]
