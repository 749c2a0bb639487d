"""The Lua scripts that keep each table write atomic: a row and its index entries change together.

Every script takes the table's ``all`` index as ``KEYS[1]`` (so a Redis Cluster routes it to
the table's slot) and builds the row and owner-index keys from prefixes in ``ARGV``; all of
them share the table's hash tag, so they live in that same slot.

Idempotency markers: a write with a caller's key passes its marker as ``KEYS[2]`` (under the
table's hash tag too) and, as its last ``ARGV``, the marker's time to live in milliseconds;
``write_rows`` takes the result to remember just before it (its mode ``ignore`` remembers its
count instead), ``match_rows`` and ``update_rows`` remember their count. A marker found means
the write ran before: nothing is written and its result comes back. A marker is set only by a
write that happened, in the same script, so the two never part.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

__all__ = [
    "INCR_ONCE",
    "INCR_WITH_TTL",
    "MATCH_ROWS",
    "SCRIPTS",
    "UPDATE_ROWS",
    "WRITE_ROWS",
    "Script",
]


@dataclass(frozen=True)
class Script:
    """A Lua script sent as EVALSHA; its SHA1 is computed here, as Redis computes it."""

    name: str
    source: str
    sha: str = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "sha", hashlib.sha1(self.source.encode()).hexdigest())


# Moves a row between owner indexes when its owner column changed (false = no owner).
_REINDEX = """
local function reindex(owner_prefix, id, old_owner, new_owner)
  if old_owner == new_owner then return end
  if old_owner then redis.call('SREM', owner_prefix .. old_owner, id) end
  if new_owner then redis.call('SADD', owner_prefix .. new_owner, id) end
end
"""

# Reads the filters at ARGV[at]: f, then per filter a column, k, and k accepted encoded values
# (k = 0: the column must be absent). Returns the fields to read ('id' first), the filters and
# the index after them. matches() says whether a row exists and passes every filter.
_FILTERS = """
local function read_filters(at)
  local f = tonumber(ARGV[at])
  at = at + 1
  local names, filters = {'id'}, {}
  for i = 1, f do
    local k = tonumber(ARGV[at + 1])
    local accepted = {}
    for j = 0, k - 1 do accepted[ARGV[at + 2 + j]] = true end
    names[i + 1] = ARGV[at]
    filters[i] = {k, accepted}
    at = at + 2 + k
  end
  return names, filters, at
end
local function matches(key, names, filters)
  local values = redis.call('HMGET', key, unpack(names))
  -- an index entry without its row (deleted behind our back) matches nothing
  if values[1] == false then return false end
  for i, filter in ipairs(filters) do
    local value = values[i + 1]
    if filter[1] == 0 then
      if value ~= false then return false end
    elseif value == false or filter[2][value] ~= true then
      return false
    end
  end
  return true
end
"""

# A write that answers a count: with a marker KEYS[2] that says it ran before, that run's count
# comes back at once; remember() keeps the count of this run in the marker.
_COUNTED = """
local function remember(changed)
  if #KEYS > 1 then redis.call('SET', KEYS[2], changed, 'NX', 'PX', ARGV[#ARGV]) end
  return changed
end
if #KEYS > 1 then
  local prior = redis.call('GET', KEYS[2])
  if prior then return tonumber(prior) end
end
"""

# ARGV: row key prefix, owner index prefix, owner column ('' = none), mode ('insert',
# 'ignore' or 'upsert'), row count, then per row: id, n, n field/value pairs, d, d fields to
# delete. Returns {1, rows written} when written; {0, id} when mode 'insert' meets an existing
# (or repeated) id: then nothing is written. Mode 'ignore' skips such rows instead and
# remembers its count in the marker. {2, result} when the marker KEYS[2] says it ran before.
WRITE_ROWS = Script(
    "write_rows",
    _REINDEX
    + """
if #KEYS > 1 then
  local prior = redis.call('GET', KEYS[2])
  if prior then return {2, prior} end
end
local row_prefix, owner_prefix, owner, mode = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local count = tonumber(ARGV[5])
local rows = {}
local at = 6
for i = 1, count do
  local n = tonumber(ARGV[at + 1])
  local d = tonumber(ARGV[at + 2 + 2 * n])
  rows[i] = {ARGV[at], at + 2, n, at + 3 + 2 * n, d}
  at = at + 3 + 2 * n + d
end
local skip = {}
if mode ~= 'upsert' then
  local seen = {}
  for i = 1, count do
    local id = rows[i][1]
    if seen[id] or redis.call('EXISTS', row_prefix .. id) == 1 then
      if mode == 'insert' then return {0, id} end
      skip[i] = true
    end
    seen[id] = true
  end
end
local written = 0
for i = 1, count do
  if not skip[i] then
    local id, from, n, del_from, d = unpack(rows[i])
    local key = row_prefix .. id
    local old_owner = false
    if owner ~= '' then old_owner = redis.call('HGET', key, owner) end
    redis.call('HSET', key, 'id', id)
    if n > 0 then redis.call('HSET', key, unpack(ARGV, from, from + 2 * n - 1)) end
    if d > 0 then redis.call('HDEL', key, unpack(ARGV, del_from, del_from + d - 1)) end
    redis.call('SADD', KEYS[1], id)
    if owner ~= '' then reindex(owner_prefix, id, old_owner, redis.call('HGET', key, owner)) end
    written = written + 1
  end
end
if #KEYS > 1 then
  local result = ARGV[#ARGV - 1]
  if mode == 'ignore' then result = tostring(written) end
  redis.call('SET', KEYS[2], result, 'NX', 'PX', ARGV[#ARGV])
end
return {1, written}
""",
)

# ARGV: row key prefix, owner index prefix, owner column ('' = none), action ('get', 'count',
# 'update' or 'delete'), candidates ('ids', 'owners' or 'all'), c, c ids or owner values,
# then the filters (see _FILTERS); for 'update' then: n, n field/value pairs to set, d, d
# fields to delete. Returns the matched rows as HGETALL arrays ('get'), how many match
# ('count') or how many rows changed (with a marker KEYS[2]: see _COUNTED).
MATCH_ROWS = Script(
    "match_rows",
    _REINDEX
    + _FILTERS
    + _COUNTED
    + """
local row_prefix, owner_prefix, owner = ARGV[1], ARGV[2], ARGV[3]
local action, source = ARGV[4], ARGV[5]
local c = tonumber(ARGV[6])
local at = 7
local ids
if source == 'all' then
  ids = redis.call('SMEMBERS', KEYS[1])
else
  ids = {}
  local seen = {}
  for i = 0, c - 1 do
    local members
    if source == 'ids' then members = {ARGV[at + i]}
    else members = redis.call('SMEMBERS', owner_prefix .. ARGV[at + i]) end
    for _, id in ipairs(members) do
      if not seen[id] then
        seen[id] = true
        ids[#ids + 1] = id
      end
    end
  end
end
local names, filters
names, filters, at = read_filters(at + c)
local matched = {}
for _, id in ipairs(ids) do
  if matches(row_prefix .. id, names, filters) then matched[#matched + 1] = id end
end
if action == 'count' then return #matched end
if action == 'get' then
  local out = {}
  for i, id in ipairs(matched) do out[i] = redis.call('HGETALL', row_prefix .. id) end
  return out
end
if action == 'delete' then
  for _, id in ipairs(matched) do
    local key = row_prefix .. id
    if owner ~= '' then reindex(owner_prefix, id, redis.call('HGET', key, owner), false) end
    redis.call('DEL', key)
    redis.call('SREM', KEYS[1], id)
  end
  return remember(#matched)
end
local n = tonumber(ARGV[at])
local from = at + 1
local d = tonumber(ARGV[from + 2 * n])
local del_from = from + 2 * n + 1
for _, id in ipairs(matched) do
  local key = row_prefix .. id
  local old_owner = false
  if owner ~= '' then old_owner = redis.call('HGET', key, owner) end
  if n > 0 then redis.call('HSET', key, unpack(ARGV, from, from + 2 * n - 1)) end
  if d > 0 then redis.call('HDEL', key, unpack(ARGV, del_from, del_from + d - 1)) end
  if owner ~= '' then reindex(owner_prefix, id, old_owner, redis.call('HGET', key, owner)) end
end
return remember(#matched)
""",
)

# ARGV: row key prefix, owner index prefix, owner column ('' = none), the filters (see
# _FILTERS), r, then per row: id, n, n field/value pairs to set, d, d fields to delete. Each
# row that exists and passes the filters gets its own values (update_many). Returns how many
# rows changed (with a marker KEYS[2]: see _COUNTED).
UPDATE_ROWS = Script(
    "update_rows",
    _REINDEX
    + _FILTERS
    + _COUNTED
    + """
local row_prefix, owner_prefix, owner = ARGV[1], ARGV[2], ARGV[3]
local names, filters, at = read_filters(4)
local count = tonumber(ARGV[at])
at = at + 1
local changed = 0
for _ = 1, count do
  local id, n = ARGV[at], tonumber(ARGV[at + 1])
  local from = at + 2
  local d = tonumber(ARGV[from + 2 * n])
  local del_from = from + 2 * n + 1
  at = del_from + d
  local key = row_prefix .. id
  if matches(key, names, filters) then
    local old_owner = false
    if owner ~= '' then old_owner = redis.call('HGET', key, owner) end
    if n > 0 then redis.call('HSET', key, unpack(ARGV, from, from + 2 * n - 1)) end
    if d > 0 then redis.call('HDEL', key, unpack(ARGV, del_from, del_from + d - 1)) end
    if owner ~= '' then reindex(owner_prefix, id, old_owner, redis.call('HGET', key, owner)) end
    changed = changed + 1
  end
end
return remember(changed)
""",
)

# KEYS[1]: the counter; ARGV: amount, ttl in milliseconds. The ttl is set when the counter
# has none (it was just created), so a window does not slide with every increment.
INCR_WITH_TTL = Script(
    "incr_with_ttl",
    """
local value = redis.call('INCRBY', KEYS[1], ARGV[1])
if redis.call('PTTL', KEYS[1]) == -1 then redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return value
""",
)

# KEYS[1]: the counter, KEYS[2]: the idempotency marker; ARGV: amount, ttl in milliseconds
# (0 = none, else as INCR_WITH_TTL), the marker's ttl in milliseconds. Returns {1, value}, or
# {0, value} with the value the first run returned when the marker says it ran before.
INCR_ONCE = Script(
    "incr_once",
    """
local prior = redis.call('GET', KEYS[2])
if prior then return {0, tonumber(prior)} end
local value = redis.call('INCRBY', KEYS[1], ARGV[1])
if ARGV[2] ~= '0' and redis.call('PTTL', KEYS[1]) == -1 then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
redis.call('SET', KEYS[2], value, 'NX', 'PX', ARGV[3])
return {1, value}
""",
)

SCRIPTS = (WRITE_ROWS, MATCH_ROWS, UPDATE_ROWS, INCR_WITH_TTL, INCR_ONCE)
