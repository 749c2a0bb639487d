"""The Lua scripts that keep each table write atomic: a row and its index entries change together.

Every table script takes the table's row index as ``KEYS[1]`` (so a Redis Cluster routes it
to the table's slot) and builds the row and owner-index keys from prefixes in ``ARGV``; all of
them share the table's hash tag, so they live in that same slot.

A row is named by its *member*: on a table without an owner column, its id, and the row index
is the set of them; on an owned table, each owner has its own ids: the member is the id's
length in bytes, ``:``, the id, ``:`` and the owner (``''`` for a row written without one),
and the row index is a sorted set of members (all of score 0), in which the rows holding one
id, whoever owns them, are one lexicographic range. The row's key is the row prefix and its
member; its hash keeps the plain ``id`` (and the owner) as fields. An update that changes a
row's owner moves it to the key of its new owner, or changes nothing when that owner has a
row with the id.

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


# What every table script starts with: ARGV[1..3] are the row key prefix, the owner index
# prefix and the owner column ('' = none). member_of() names a row (see the module docs);
# id_of() reads the id back; the index_* functions keep KEYS[1]; with_id() lists the members of
# the rows holding an id, of every owner (UTF-8 never holds byte 255: it ends the range).
# reindex() moves an id between owner indexes when its row's owner changed (false = none);
# settle() then moves an updated row to the key of its owner.
_ROWS = """
local row_prefix, owner_prefix, owner = ARGV[1], ARGV[2], ARGV[3]
local function member_of(id, row_owner)
  if owner == '' then return id end
  return #id .. ':' .. id .. ':' .. (row_owner or '')
end
local function id_of(member)
  if owner == '' then return member end
  local colon = string.find(member, ':', 1, true)
  return string.sub(member, colon + 1, colon + tonumber(string.sub(member, 1, colon - 1)))
end
local function index_add(member)
  if owner == '' then redis.call('SADD', KEYS[1], member)
  else redis.call('ZADD', KEYS[1], 0, member) end
end
local function index_remove(member)
  if owner == '' then redis.call('SREM', KEYS[1], member)
  else redis.call('ZREM', KEYS[1], member) end
end
local function every_row()
  if owner == '' then return redis.call('SMEMBERS', KEYS[1]) end
  return redis.call('ZRANGE', KEYS[1], 0, -1)
end
local function with_id(id)
  if owner == '' then return {id} end
  local from = member_of(id, '')
  return redis.call('ZRANGEBYLEX', KEYS[1], '[' .. from, '(' .. from .. string.char(255))
end
local function reindex(id, old_owner, new_owner)
  if old_owner == new_owner then return end
  if old_owner then redis.call('SREM', owner_prefix .. old_owner, id) end
  if new_owner then redis.call('SADD', owner_prefix .. new_owner, id) end
end
local function settle(member, old_owner)
  if owner == '' then return end
  local id = id_of(member)
  local new_owner = redis.call('HGET', row_prefix .. member, owner)
  reindex(id, old_owner, new_owner)
  local target = member_of(id, new_owner)
  if target ~= member then
    redis.call('RENAME', row_prefix .. member, row_prefix .. target)
    index_remove(member)
    index_add(target)
  end
end
"""

# Updates: apply() sets n field/value pairs from ARGV[from] and deletes d fields from
# ARGV[del_from] of the row at member, then settles it. owner_given() is the owner those values
# give a row (nil: they leave it; '' when they delete it). collision() is the id of a row of
# members that the move to new_owner would put on a row that exists or another moved row
# takes (claimed), else nil: checked before anything is written.
_UPDATES = """
local function apply(member, from, n, del_from, d)
  local key = row_prefix .. member
  local old_owner = false
  if owner ~= '' then old_owner = redis.call('HGET', key, owner) end
  if n > 0 then redis.call('HSET', key, unpack(ARGV, from, from + 2 * n - 1)) end
  if d > 0 then redis.call('HDEL', key, unpack(ARGV, del_from, del_from + d - 1)) end
  settle(member, old_owner)
end
local function owner_given(from, n, del_from, d)
  if owner == '' then return nil end
  for i = from, from + 2 * n - 2, 2 do
    if ARGV[i] == owner then return ARGV[i + 1] end
  end
  for i = del_from, del_from + d - 1 do
    if ARGV[i] == owner then return '' end
  end
  return nil
end
local function collision(members, new_owner, claimed)
  for _, member in ipairs(members) do
    local id = id_of(member)
    local target = member_of(id, new_owner)
    if target ~= member then
      if claimed[target] or redis.call('EXISTS', row_prefix .. target) == 1 then return id end
      claimed[target] = true
    end
  end
  return nil
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
# 'ignore' or 'upsert'), row count, then per row: id, owner ('' = none; the owner column's
# value among the pairs), n, n field/value pairs, d, d fields to delete. A row is its
# (owner, id) on an owned table. Returns {1, rows written} when written; {0, id} when mode
# 'insert' meets an existing (or repeated) row: then nothing is written. Mode 'ignore' skips
# such rows instead and remembers its count in the marker. {2, result} when the marker
# KEYS[2] says it ran before.
WRITE_ROWS = Script(
    "write_rows",
    _ROWS
    + """
if #KEYS > 1 then
  local prior = redis.call('GET', KEYS[2])
  if prior then return {2, prior} end
end
local mode = ARGV[4]
local count = tonumber(ARGV[5])
local rows = {}
local at = 6
for i = 1, count do
  local n = tonumber(ARGV[at + 2])
  local d = tonumber(ARGV[at + 3 + 2 * n])
  rows[i] = {ARGV[at], member_of(ARGV[at], ARGV[at + 1]), at + 3, n, at + 4 + 2 * n, d}
  at = at + 4 + 2 * n + d
end
local skip = {}
if mode ~= 'upsert' then
  local seen = {}
  for i = 1, count do
    local member = rows[i][2]
    if seen[member] or redis.call('EXISTS', row_prefix .. member) == 1 then
      if mode == 'insert' then return {0, rows[i][1]} end
      skip[i] = true
    end
    seen[member] = true
  end
end
local written = 0
for i = 1, count do
  if not skip[i] then
    local id, member, from, n, del_from, d = unpack(rows[i])
    local key = row_prefix .. member
    local old_owner = false
    if owner ~= '' then old_owner = redis.call('HGET', key, owner) end
    redis.call('HSET', key, 'id', id)
    if n > 0 then redis.call('HSET', key, unpack(ARGV, from, from + 2 * n - 1)) end
    if d > 0 then redis.call('HDEL', key, unpack(ARGV, del_from, del_from + d - 1)) end
    index_add(member)
    if owner ~= '' then reindex(id, old_owner, redis.call('HGET', key, owner)) end
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
# 'update' or 'delete'), candidates, c, c values: 'keys' (c / 2 id and owner pairs: those
# rows), 'ids' (ids: every owner's row of each), 'owners' (owner values: their rows) or 'all';
# then the filters (see _FILTERS); for 'update' then: n, n field/value pairs to set, d, d
# fields to delete. Returns the matched rows as HGETALL arrays ('get'), how many match
# ('count') or how many rows changed (with a marker KEYS[2]: see _COUNTED); {0, id} when an
# update of the owner would move a row onto another one: then nothing is written.
MATCH_ROWS = Script(
    "match_rows",
    _ROWS
    + _UPDATES
    + _FILTERS
    + _COUNTED
    + """
local action, source = ARGV[4], ARGV[5]
local c = tonumber(ARGV[6])
local at = 7
local members
if source == 'all' then
  members = every_row()
else
  members = {}
  local seen = {}
  local function take(found)
    for _, member in ipairs(found) do
      if not seen[member] then
        seen[member] = true
        members[#members + 1] = member
      end
    end
  end
  if source == 'keys' then
    for i = 0, c - 2, 2 do take({member_of(ARGV[at + i], ARGV[at + i + 1])}) end
  elseif source == 'ids' then
    for i = 0, c - 1 do take(with_id(ARGV[at + i])) end
  else
    for i = 0, c - 1 do
      local found = redis.call('SMEMBERS', owner_prefix .. ARGV[at + i])
      for j, id in ipairs(found) do found[j] = member_of(id, ARGV[at + i]) end
      take(found)
    end
  end
end
local names, filters
names, filters, at = read_filters(at + c)
local matched = {}
for _, member in ipairs(members) do
  if matches(row_prefix .. member, names, filters) then matched[#matched + 1] = member end
end
if action == 'count' then return #matched end
if action == 'get' then
  local out = {}
  for i, member in ipairs(matched) do out[i] = redis.call('HGETALL', row_prefix .. member) end
  return out
end
if action == 'delete' then
  for _, member in ipairs(matched) do
    local key = row_prefix .. member
    if owner ~= '' then reindex(id_of(member), redis.call('HGET', key, owner), false) end
    redis.call('DEL', key)
    index_remove(member)
  end
  return remember(#matched)
end
local n = tonumber(ARGV[at])
local from = at + 1
local d = tonumber(ARGV[from + 2 * n])
local del_from = from + 2 * n + 1
local new_owner = owner_given(from, n, del_from, d)
if new_owner then
  local clash = collision(matched, new_owner, {})
  if clash then return {0, clash} end
end
for _, member in ipairs(matched) do apply(member, from, n, del_from, d) end
return remember(#matched)
""",
)

# ARGV: row key prefix, owner index prefix, owner column ('' = none), o, o owner values (each
# row is looked for under each; o = 0: every owner's row of its id), the filters (see
# _FILTERS), r, then per row: id, n, n field/value pairs to set, d, d fields to delete. Each
# row that exists and passes the filters gets its own values (update_many). Returns how many
# rows changed (with a marker KEYS[2]: see _COUNTED), or {0, id} when an update of the owner
# would move a row onto another one: then nothing is written.
UPDATE_ROWS = Script(
    "update_rows",
    _ROWS
    + _UPDATES
    + _FILTERS
    + _COUNTED
    + """
local o = tonumber(ARGV[4])
local names, filters, at = read_filters(5 + o)
local count = tonumber(ARGV[at])
at = at + 1
local plan = {}
local claimed = {}
for _ = 1, count do
  local id, n = ARGV[at], tonumber(ARGV[at + 1])
  local from = at + 2
  local d = tonumber(ARGV[from + 2 * n])
  local del_from = from + 2 * n + 1
  at = del_from + d
  local candidates
  if o == 0 then
    candidates = with_id(id)
  else
    candidates = {}
    for i = 5, 4 + o do candidates[#candidates + 1] = member_of(id, ARGV[i]) end
  end
  local matched = {}
  for _, member in ipairs(candidates) do
    if matches(row_prefix .. member, names, filters) then matched[#matched + 1] = member end
  end
  local new_owner = owner_given(from, n, del_from, d)
  if new_owner then
    local clash = collision(matched, new_owner, claimed)
    if clash then return {0, clash} end
  end
  plan[#plan + 1] = {matched, from, n, del_from, d}
end
local changed = 0
for _, step in ipairs(plan) do
  local matched, from, n, del_from, d = unpack(step)
  for _, member in ipairs(matched) do
    apply(member, from, n, del_from, d)
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
