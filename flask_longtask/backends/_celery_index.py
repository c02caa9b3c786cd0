"""The Celery backend's listing index, in Redis (see :meth:`Backend.list_jobs
<flask_longtask.backends.Backend.list_jobs>`).

Under the backend's prefix:

==========================  ======================================================================
``index:entries``           a hash: job id -> its :class:`~flask_longtask.backends.base.JobEntry`
                            as JSON (``task``, ``status``, ``owner``, ``created``, ``expire``: the
                            epoch second it expires at, or ``null``)
``index:all``               a sorted set of every job id, all scores 0: ordered by id, which is
                            by submit time, and walked down with ``ZREVRANGEBYLEX``
``index:status:<status>``   the same, of the jobs with that entry status
``index:task:<task>``       ... of one task's jobs
``index:owner:<owner>``     ... of one owner's jobs
``index:expiry``            a sorted set: job id -> when its entry expires (ended jobs only)
``tallies``                 a hash: the metrics' counters (:class:`~.entry.Tally`), three fields
                            per task, status and duration bucket (``j``: jobs, ``s``: seconds,
                            ``r``: retries, then the three as a JSON array)
==========================  ======================================================================

Each write is part of a step that exists anyway:

* a submit (``store_and_enqueue``) adds the entry with commands packed *before* the job's
  records in the same send: a worker that finds the record finds the entry;
* the end script (``end_job``: the end claim, the final records, the push to the done list)
  replaces the entry with the ended one and moves it to its status's set, atomically with the
  end, then removes up to :data:`SWEEP_ON_END` entries whose expiry has passed (each end adds at
  most one: the index never grows past the records it lists by more than those not yet swept),
  and adds the job to its tallies;
* ``forget`` (``flask longtask purge``, a submit that failed) removes it.

A query walks the smallest of the sets its filters name (or ``index:all``) newest first from
``before`` and checks each entry against the rest: a page is one
``ZREVRANGEBYLEX`` and one ``HMGET`` a batch. The Lua names keys from the prefix it is passed,
so the index needs a single Redis (as every other script of the backend does), not a cluster.
"""

from __future__ import annotations

import json
import time
import typing as t

from .base import JobEntry, JobQuery, Tally
from .entry import tally_of

if t.TYPE_CHECKING:  # pragma: no cover
    from .base import JobEnd
    from .celery import CeleryBackend

#: Entries whose expiry has passed that each job's end removes.
SWEEP_ON_END: t.Final = 10
#: Ids read at a time by a query.
BATCH: t.Final = 200
_STATUSES = ("queued", "succeeded", "failed", "cancelled")

#: Lua functions of the index, put at the top of every script that uses them.
LUA: t.Final = """
local function unindex(p, id)
  local raw = redis.call('hget', p .. 'index:entries', id)
  if raw then
    local e = cjson.decode(raw)
    redis.call('zrem', p .. 'index:status:' .. e.status, id)
    redis.call('zrem', p .. 'index:task:' .. e.task, id)
    if type(e.owner) == 'string' then redis.call('zrem', p .. 'index:owner:' .. e.owner, id) end
    redis.call('hdel', p .. 'index:entries', id)
  end
  redis.call('zrem', p .. 'index:all', id)
  redis.call('zrem', p .. 'index:expiry', id)
end
local function index(p, id, raw, status, task, owner, expire)
  redis.call('hset', p .. 'index:entries', id, raw)
  redis.call('zadd', p .. 'index:all', 0, id)
  redis.call('zadd', p .. 'index:status:' .. status, 0, id)
  redis.call('zadd', p .. 'index:task:' .. task, 0, id)
  if type(owner) == 'string' then redis.call('zadd', p .. 'index:owner:' .. owner, 0, id) end
  if type(expire) == 'number' then redis.call('zadd', p .. 'index:expiry', expire, id) end
end
local function sweep(p, now, n)
  local gone = redis.call('zrangebyscore', p .. 'index:expiry', '-inf', now, 'LIMIT', 0, n)
  for _, id in ipairs(gone) do unindex(p, id) end
  return #gone
end
"""

#: The end script's part (see :data:`._celery_scripts.ADD_THEN_WRITE`): ARGV's last element,
#: after the writes, is :meth:`CeleryIndex.on_end`'s JSON; ``result`` is 0 when the "otherwise"
#: writes were applied (the job ends "cancelled"). The entries come encoded: cjson would round
#: their times to 14 digits.
ON_END: t.Final = f"""
if #ARGV > 5 + 3 * (#KEYS - 4) then
  local ix = cjson.decode(ARGV[#ARGV])
  local raw, status, tally = ix.e, ix.s, ix.t
  if result == 0 then raw, status, tally = ix.c, 'cancelled', ix.tc end
  unindex(ix.p, ix.id)
  index(ix.p, ix.id, raw, status, ix.task, ix.owner, ix.x)
  sweep(ix.p, ix.now, {SWEEP_ON_END})
  redis.call('hincrby', ix.p .. 'tallies', 'j' .. tally[1], 1)
  redis.call('hincrbyfloat', ix.p .. 'tallies', 's' .. tally[1], tally[2])
  if tally[3] ~= '0' then redis.call('hincrby', ix.p .. 'tallies', 'r' .. tally[1], tally[3]) end
end
"""

_FORGET = LUA + "unindex(ARGV[1], ARGV[2])\n"
_SWEEP = LUA + "return sweep(ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3]))\n"


def _entry_json(entry: JobEntry, now: float) -> dict[str, t.Any]:
    expire = None if entry.expire is None else now + entry.expire
    return {
        "id": entry.id,
        "task": entry.task,
        "status": entry.status,
        "owner": entry.owner,
        "created": entry.created,
        "expire": expire,
    }


class CeleryIndex:
    """The listing index of one :class:`~flask_longtask.backends.celery.CeleryBackend`."""

    def __init__(self, backend: CeleryBackend) -> None:
        self.backend = backend
        self._forget = backend.redis.register_script(_FORGET)
        self._sweep = backend.redis.register_script(_SWEEP)

    def on_create(self, entry: JobEntry) -> list[tuple[t.Any, ...]]:
        """The commands that add a new job's entry (sent with its records, before them)."""
        prefix, job_id = self.backend.prefix, entry.id
        commands: list[tuple[t.Any, ...]] = [
            ("HSET", f"{prefix}index:entries", job_id, json.dumps(_entry_json(entry, time.time()))),
            ("ZADD", f"{prefix}index:all", 0, job_id),
            ("ZADD", f"{prefix}index:status:{entry.status}", 0, job_id),
            ("ZADD", f"{prefix}index:task:{entry.task}", 0, job_id),
        ]
        if entry.owner is not None:
            commands.append(("ZADD", f"{prefix}index:owner:{entry.owner}", 0, job_id))
        return commands

    def on_end(self, end: JobEnd) -> str | None:
        """The end script's last argument (:data:`ON_END`): the entry as ``end.writes`` end the
        job (the script makes it "cancelled" if it applies ``end.otherwise``)."""
        entry, cancelled = end.ended(True), end.ended(False)
        if entry is None or cancelled is None:
            return None
        now = time.time()
        done = _entry_json(entry, now)
        return json.dumps(
            {
                "p": self.backend.prefix,
                "id": entry.id,
                "s": entry.status,
                "task": entry.task,
                "owner": entry.owner,
                "x": done["expire"],
                "e": json.dumps(done),
                "c": json.dumps(_entry_json(cancelled, now)),
                "t": _tally_args(entry),
                "tc": _tally_args(cancelled),
                "now": now,
            }
        )

    def forget(self, job_id: str) -> None:
        self._forget(args=[self.backend.prefix, job_id])

    def query(self, q: JobQuery) -> list[str]:
        """The ids of the live entries that match ``q``, newest first."""
        prefix, redis = self.backend.prefix, self.backend.redis
        sets = [
            f"{prefix}index:{kind}:{value}"
            for kind, value in (("task", q.task), ("owner", q.owner), ("status", q.status))
            if value is not None
        ]
        walked = sets[0] if sets else f"{prefix}index:all"
        if len(sets) > 1:  # walk the smallest: the others are checked on each entry
            pipe = redis.pipeline(transaction=False)
            for name in sets:
                pipe.zcard(name)
            walked = min(zip(pipe.execute(), sets, strict=True))[1]
        top = "+" if q.before is None else f"({q.before}"
        bottom = "-" if q.since is None else f"[{q.lowest_id()}"
        found: list[str] = []
        now = time.time()
        while len(found) < q.limit:
            ids = [_text(raw) for raw in redis.zrevrangebylex(walked, top, bottom, start=0, num=BATCH)]
            if not ids:
                break
            for job_id, raw in zip(ids, redis.hmget(f"{prefix}index:entries", ids), strict=True):
                entry = _entry(job_id, raw, now)
                if entry is not None and q.matches(entry):
                    found.append(job_id)
                    if len(found) >= q.limit:
                        break
            if len(ids) < BATCH:
                break
            top = f"({ids[-1]}"
        return found

    def tallies(self) -> list[Tally]:
        """The tallies, read back (validated: a field that does not parse is left out)."""
        found: dict[tuple[str, str, float | None], list[t.Any]] = {}
        for raw, value in self.backend.redis.hgetall(f"{self.backend.prefix}tallies").items():
            field = _text(raw)
            try:
                task, status, bound = json.loads(field[1:])
                key = (str(task), str(status), None if bound is None else float(bound))
                held = found.setdefault(key, [0, 0.0, 0])
                held["jsr".index(field[0])] = float(value) if field[0] == "s" else int(value)
            except (ValueError, TypeError, IndexError):
                continue
        return [Tally(task, status, bound, *held) for (task, status, bound), held in found.items()]

    def counts(self) -> dict[str, int]:
        """The entries of each status, once those whose expiry has passed are swept."""
        prefix = self.backend.prefix
        while self._sweep(args=[prefix, time.time(), 1000]) == 1000:
            pass
        pipe = self.backend.redis.pipeline(transaction=False)
        for status in _STATUSES:
            pipe.zcard(f"{prefix}index:status:{status}")
        return {status: int(n) for status, n in zip(_STATUSES, pipe.execute(), strict=True) if n}


def _tally_args(entry: JobEntry) -> list[str]:
    """What the end script adds to the tallies for ``entry``: the field (a JSON array of task,
    status and bound), the seconds and the retries, as strings."""
    task, status, bound, seconds, retries = tally_of(entry)
    return [json.dumps([task, status, None if bound is None else repr(bound)]), repr(seconds), str(retries)]


def _text(raw: bytes | str) -> str:
    return raw.decode() if isinstance(raw, bytes) else raw


def _entry(job_id: str, raw: bytes | str | None, now: float) -> JobEntry | None:
    """An entry read back (validated: whatever can write to Redis can write there); ``None`` if
    it is missing, malformed or expired."""
    if raw is None:
        return None
    try:
        data = json.loads(raw)
        expire = data.get("expire")
        if isinstance(expire, (int, float)) and expire <= now:
            return None
        owner = data.get("owner")
        return JobEntry(
            job_id,
            str(data["task"]),
            str(data["status"]),
            float(data["created"]),
            owner if isinstance(owner, str) else None,
        )
    except (ValueError, KeyError, TypeError, AttributeError):
        return None
