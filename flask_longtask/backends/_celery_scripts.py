"""The Lua scripts of :class:`~flask_longtask.backends.celery.CeleryBackend` that write a job's
steps, in one place (the republishing pass's move script is with the pass, in
:mod:`~flask_longtask.backends._celery_recovery`). Redis runs a script alone: each is atomic,
and one round trip."""

from __future__ import annotations

import typing as t

from . import _celery_index as index

# KEYS: the key to add, the "unless" key, the list to push to (a job's end: its done list), the
# index of queued jobs, then one key per write (writes, then otherwise).
# ARGV: value, px (0: none), whether "unless" applies, how many writes, the id of the job that
# ends ("": none; else push to its done list and take it out of the index), then per write: op
# ("set", "delete", "delete_if"), encoded value, px; then, for a job's end, its listing entry
# (see _celery_index.ON_END).
#: Add a key, then apply writes (or the "otherwise" ones): ``add_then_write`` and ``end_job``.
ADD_THEN_WRITE: t.Final = (
    index.LUA
    + """
local added
if ARGV[2] == '0' then
  added = redis.call('set', KEYS[1], ARGV[1], 'NX')
else
  added = redis.call('set', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2])
end
if not added then return -1 end
local n = tonumber(ARGV[4])
local first, last, result = 5, 4 + n, 1
if ARGV[3] == '1' and redis.call('exists', KEYS[2]) == 1 then
  first, last, result = 5 + n, #KEYS, 0
end
for i = first, last do
  local a = 6 + (i - 5) * 3
  local op, value, px = ARGV[a], ARGV[a + 1], ARGV[a + 2]
  if op == 'set' then
    if px == '0' then redis.call('set', KEYS[i], value) else redis.call('set', KEYS[i], value, 'PX', px) end
  elseif op == 'delete' then
    redis.call('del', KEYS[i])
  elseif op == 'delete_if' then
    if redis.call('get', KEYS[i]) == value then redis.call('del', KEYS[i]) end
  end
end
if ARGV[5] ~= '' then
  redis.call('rpush', KEYS[3], '1')
  if ARGV[2] ~= '0' then redis.call('pexpire', KEYS[3], ARGV[2]) end
  redis.call('zrem', KEYS[4], ARGV[5])
end
"""
    + index.ON_END
    + """
return result
"""
)

#: Delete a key only if it holds a value: ``delete_if``.
DELETE_IF: t.Final = """
if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end
return 0
"""
