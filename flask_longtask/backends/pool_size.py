"""The pool's size: the CPUs this process may use, and the size settings checked.

Apart from the diskcache package (whose ``__init__`` starts what a pool needs), so that
``LongTask.init_app`` checks ``LONGTASK_WORKERS``, ``LONGTASK_MAX_WORKERS`` and
``LONGTASK_WORKER_IDLE`` for every app without importing the pool (ThreadBackend and Celery apps
have none). :mod:`.diskcache.elastic` grows and shrinks the pool within them.
"""

from __future__ import annotations

import math
import os
import typing as t


class Quota(t.NamedTuple):
    """A cgroup's CPU quota, in CPUs, and the file its CPU use so far is read from."""

    cpus: float
    usage: str


def cgroup_quota(root: str = "/sys/fs/cgroup", cgroups: str = "/proc/self/cgroup") -> Quota | None:
    """The tightest CPU quota on this process's cgroup and its ancestors (cgroup v2 ``cpu.max``;
    v1 ``cpu.cfs_quota_us`` / ``cpu.cfs_period_us``), ``None`` where none is set or none can be
    read. Where the cgroup's path is not under the mount, the container sees its own cgroup there."""
    try:
        with open(cgroups) as f:
            lines = f.read().splitlines()
    except OSError:
        return None
    found: list[Quota] = []
    for line in lines:
        _, controllers, path = line.split(":", 2) if line.count(":") >= 2 else ("", "-", "")
        if controllers == "":  # v2: one hierarchy, mounted at root (or root/unified beside v1)
            mount = root if os.path.exists(os.path.join(root, "cgroup.controllers")) else os.path.join(root, "unified")
            for here in _up(mount, path):
                limit = read(os.path.join(here, "cpu.max")).split()  # "max 100000": none
                if len(limit) == 2 and limit[0].isdigit() and limit[1].isdigit() and int(limit[0]) and int(limit[1]):
                    found.append(Quota(int(limit[0]) / int(limit[1]), os.path.join(here, "cpu.stat")))
        elif "cpu" in controllers.split(","):  # v1: cpu's hierarchy; its use in cpuacct's
            mount = os.path.join(root, "cpu")
            for here in _up(mount, path):
                quota, period = (read(os.path.join(here, f"cpu.cfs_{name}_us")) for name in ("quota", "period"))
                if quota.lstrip("-").isdigit() and int(quota) > 0 and period.isdigit() and int(period) > 0:
                    usage = os.path.join(root, "cpuacct", os.path.relpath(here, mount), "cpuacct.usage")
                    found.append(Quota(int(quota) / int(period), os.path.normpath(usage)))
    return min(found, default=None)


def _up(mount: str, path: str) -> t.Iterator[str]:
    """A cgroup's directory under ``mount``, then its ancestors' up to the mount."""
    mount = os.path.normpath(mount)
    here = os.path.normpath(os.path.join(mount, path.lstrip("/")))
    if not os.path.isdir(here):
        here = mount
    while here.startswith(mount):
        yield here
        if here == mount:
            return
        here = os.path.dirname(here)


def read(path: str) -> str:
    """A small file's text, stripped; ``""`` if it cannot be read (cgroup files come and go)."""
    try:
        with open(path) as f:
            return f.read().strip()
    except (OSError, ValueError):
        return ""


def usable_cpus() -> int:
    """The CPUs this process may use: those it may run on, within its cgroup's CPU quota (rounded
    up: 1.5 CPUs is 2)."""
    count = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    quota = cgroup_quota()
    return count if quota is None else max(1, min(count, math.ceil(quota.cpus)))


#: The CPUs this process may use (:func:`usable_cpus`): the default ``workers``, and what the pool
#: does not oversubscribe.
CPUS = usable_cpus()


def settings(
    workers: t.Any,
    max_workers: t.Any,
    worker_idle: t.Any,
    names: t.Sequence[str] = ("workers", "max_workers", "worker_idle"),
) -> tuple[int, int | None, float]:
    """The pool's size settings, checked: ``workers`` (default :data:`CPUS`) and ``max_workers``
    whole numbers from 1 (``max_workers`` ``None`` for the default, and not below ``workers``),
    ``worker_idle`` a finite number of seconds from 0. ``names``: how the errors name the three.

    :raises TypeError: not a number (or not a whole one).
    :raises ValueError: out of range.
    """
    for name, value in zip(names[:2], (workers, max_workers), strict=True):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
            raise TypeError(f"{name} must be a whole number of worker processes or None, not {value!r}.")
        if value is not None and value < 1:
            raise ValueError(f"{name} must be at least 1 (None: the default), not {value!r}.")
    if isinstance(worker_idle, bool) or not isinstance(worker_idle, (int, float)):
        raise TypeError(f"{names[2]} must be a number of seconds, not {worker_idle!r}.")
    if not 0 <= worker_idle < math.inf:  # (NaN too)
        raise ValueError(f"{names[2]} must be a finite number of seconds from 0, not {worker_idle!r}.")
    workers = workers or CPUS
    if max_workers is not None and max_workers < workers:
        raise ValueError(f"{names[1]} ({max_workers}) must not be below {names[0]} ({workers}).")
    return workers, max_workers, float(worker_idle)
