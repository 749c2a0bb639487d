"""The Lua scripts by which workers take, hold and take over tasks (see
:mod:`wf78_core.cluster.scripts` for the keys and the common part every script starts with).
"""

from __future__ import annotations

from wf78_core.cluster.scripts import COMMON
from wf78_core.cluster.shares import REFILL

__all__ = ["HEARTBEAT", "RECLAIM", "SCRIPTS", "TAKE"]

#: the scripts of this module, by name
SCRIPTS = ("HEARTBEAT", "RECLAIM", "TAKE")

# ARGV: prefix, ttl, consumer, count, aging ms, lease ttl ms, capability count, capabilities.
# Reads the most urgent undelivered entries across the capabilities' level streams: by
# level minus the aging credit of the entry's wait, then level, then age.
TAKE = (
    COMMON
    + REFILL
    + r"""
local consumer, need = ARGV[3], tonumber(ARGV[4])
local aging, ttl = tonumber(ARGV[5]), tonumber(ARGV[6])
-- When an entry's task became ready: its 'm' (set when it left its tenant's lane), else
-- its id's time.
local function ms_of(e)
  local flat = e[2]
  for i = 1, #flat, 2 do
    if flat[i] == 'm' then return tonumber(flat[i + 1]) end
  end
  return tonumber(string.match(e[1], '^(%d+)'))
end
local function eff(level, ms)
  if aging <= 0 then return level end
  return level - math.floor((NOW - ms) / aging)
end
local function before(e, level, ms, other)
  if e ~= other.eff then return e < other.eff end
  if level ~= other.level then return level < other.level end
  return ms < other.ms
end
local function last_delivered(q, cap)
  local groups = redis.pcall('XINFO', 'GROUPS', q)
  if type(groups) ~= 'table' or groups.err then return nil end
  for _, g in ipairs(groups) do
    local f = fields_of(g)
    if f['name'] == cap then return f['last-delivered-id'] end
  end
  return nil
end
-- The stream's next undelivered entry; with none left, the lanes' next turns move in
-- (only as many as this worker still takes: the turn order decides the rest later).
local function head(c)
  local h = redis.call('XRANGE', c.q, '(' .. c.last, '+', 'COUNT', 1)
  if #h == 0 then
    if refill(c.q, c.cap, c.lv, need) == 0 then return false end
    h = redis.call('XRANGE', c.q, '(' .. c.last, '+', 'COUNT', 1)
    if #h == 0 then return false end
  end
  c.ms = ms_of(h[1])
  c.eff = eff(c.level, c.ms)
  return true
end
local cands = {}
for i = 1, tonumber(ARGV[7]) do
  local cap = ARGV[7 + i]
  for _, level in ipairs(redis.call('ZRANGE', P .. 'levels:' .. cap, 0, -1)) do
    local q = qkey(cap, level)
    local last = last_delivered(q, cap)
    if last then
      local c = {q = q, cap = cap, level = tonumber(level), lv = level, last = last}
      if head(c) then cands[#cands + 1] = c end
    end
  end
end
local out = {}
local order = function(a, b) return before(a.eff, a.level, a.ms, b) end
while need > 0 and #cands > 0 do
  table.sort(cands, order)
  local best, second = cands[1], cands[2]
  local n = need
  if second then
    n = 0
    for _, e in ipairs(redis.call('XRANGE', best.q, '(' .. best.last, '+', 'COUNT', need)) do
      local ms = ms_of(e)
      if n > 0 and not before(eff(best.level, ms), best.level, ms, second) then break end
      n = n + 1
    end
  end
  local got = redis.call('XREADGROUP', 'GROUP', best.cap, consumer, 'COUNT', n,
    'STREAMS', best.q, '>')
  local entries = {}
  if got then entries = got[1][2] end
  for _, e in ipairs(entries) do
    best.last = e[1]
    local f = fields_of(e[2])
    local rk = P .. 'run:' .. f.r
    local v = redis.call('HMGET', rk, 'st', 's:' .. f.t, 'pri', 'ctx', 'ts:' .. f.t, 'a:' .. f.t)
    if v[1] == 'running' and v[2] == 'queued' then
      need = need - 1
      local attempts = (tonumber(v[6]) or 0) + 1
      if v[5] then
        redis.call('HSET', rk, 's:' .. f.t, 'running', 'a:' .. f.t, attempts)
      else
        redis.call('HSET', rk, 's:' .. f.t, 'running', 'ts:' .. f.t, NOW_S, 'a:' .. f.t, attempts)
      end
      redis.call('ZADD', lease_key(f.w), NOW + ttl, f.r .. SEP .. f.t)
      out[#out + 1] = {best.q, best.cap, e[1], f.r, f.t, f.w, v[3], attempts, v[4], 1}
    else
      drop(best.q, best.cap, e[1], f.w, f.r, f.t)
    end
  end
  if #entries == 0 or not head(best) then table.remove(cands, 1) end
end
ring()
return out
"""
)

# ARGV: prefix, ttl, consumer, stuck ms, lease ttl ms, room (the most to take over),
# capability count, capabilities.
# Takes over the in-flight entries of workers whose heartbeat stopped, and (XAUTOCLAIM)
# entries idle past ``stuck`` (a lease plus the margin: a live worker's HEARTBEAT keeps
# what it works on from going idle, up to the task's budget). A claimed task needs its
# lease again; without one it goes back to waiting. Returns what to run, with its
# delivery count (the caller dead-letters poison entries).
RECLAIM = (
    COMMON
    + r"""
local consumer, stuck, ttl = ARGV[3], tonumber(ARGV[4]), tonumber(ARGV[5])
local room = tonumber(ARGV[6])
local out = {}
local function claimed(q, cap, id, flat, deliveries)
  local f = fields_of(flat)
  local rk = P .. 'run:' .. f.r
  local state = redis.call('HGET', rk, 's:' .. f.t)
  if redis.call('HGET', rk, 'st') ~= 'running' or (state ~= 'running' and state ~= 'queued') then
    drop(q, cap, id, f.w, f.r, f.t)
    return
  end
  local lease, member = lease_key(f.w), f.r .. SEP .. f.t
  if not redis.call('ZSCORE', lease, member) then
    redis.call('ZREMRANGEBYSCORE', lease, '-inf', NOW)
    if redis.call('ZCARD', lease) >= limit_of(f.w) then
      redis.call('XACK', q, cap, id)
      redis.call('XDEL', q, id)
      redis.call('HSET', rk, 's:' .. f.t, 'queued')
      local v = redis.call('HMGET', rk, 'pri', 'tn')
      wait_add(f.w, v[1], f.r, f.t, cap, v[2])
      return
    end
  end
  redis.call('ZADD', lease, NOW + ttl, member)
  redis.call('HSET', rk, 's:' .. f.t, 'running')
  local attempts = redis.call('HINCRBY', rk, 'a:' .. f.t, 1)
  out[#out + 1] = {q, cap, id, f.r, f.t, f.w, redis.call('HGET', rk, 'pri'), attempts,
    redis.call('HGET', rk, 'ctx'), deliveries}
end
for i = 1, tonumber(ARGV[7]) do
  local cap = ARGV[7 + i]
  for _, level in ipairs(redis.call('ZRANGE', P .. 'levels:' .. cap, 0, -1)) do
    local q = qkey(cap, level)
    local consumers = redis.pcall('XINFO', 'CONSUMERS', q, cap)
    if type(consumers) == 'table' and not consumers.err then
      for _, c in ipairs(consumers) do
        local info = fields_of(c)
        local name = info['name']
        if name ~= consumer and redis.call('EXISTS', P .. 'hb:' .. name) == 0 then
          if tonumber(info['pending']) == 0 then
            -- a consumer gone with nothing left: forget it (the next round, once emptied)
            redis.call('XGROUP', 'DELCONSUMER', q, cap, name)
          else
            -- Only as many as this worker has room for: the rest wait for the next round.
            for _, p in ipairs(redis.call('XPENDING', q, cap, '-', '+', 100, name)) do
              if #out >= room then break end
              local got = redis.call('XCLAIM', q, cap, consumer, 0, p[1])
              if got[1] then claimed(q, cap, p[1], got[1][2], tonumber(p[4]) + 1) end
            end
          end
        end
      end
      if #out < room then
        local auto = redis.call('XAUTOCLAIM', q, cap, consumer, stuck, '0-0',
          'COUNT', room - #out)
        for _, e in ipairs(auto[2]) do
          if e and e[2] then
            local p = redis.call('XPENDING', q, cap, e[1], e[1], 1)
            claimed(q, cap, e[1], e[2], tonumber(p[1][4]))
          end
        end
      end
    end
  end
end
ring()
return out
"""
)

# ARGV: prefix, ttl, consumer, lease ttl ms, held (msgpack: a list of [stream, capability,
# entry, run, task, workflow, touch]). The worker lives (its heartbeat key) and keeps the
# leases of what it holds; an entry with touch = 1 is claimed again by its owner, which
# makes its idle time start again (JUSTID: its delivery count stays), so XAUTOCLAIM
# takes over only entries nobody works on. Returns the positions (from 1) of entries no
# longer this worker's to run: not pending for it, or their run or task is over.
HEARTBEAT = (
    COMMON
    + r"""
local consumer, ttl = ARGV[3], tonumber(ARGV[4])
redis.call('SET', P .. 'hb:' .. consumer, 1, 'PX', ttl)
local gone = {}
for i, h in ipairs(cmsgpack.unpack(ARGV[5])) do
  local q, cap, id, run, task, wf = h[1], h[2], h[3], h[4], h[5], h[6]
  local p = redis.pcall('XPENDING', q, cap, id, id, 1)
  local v = redis.call('HMGET', P .. 'run:' .. run, 'st', 's:' .. task)
  if type(p) ~= 'table' or #p ~= 1 or p[1][2] ~= consumer or v[1] ~= 'running'
    or v[2] ~= 'running' then
    gone[#gone + 1] = i
  else
    redis.call('ZADD', lease_key(wf), 'XX', NOW + ttl, run .. SEP .. task)
    if h[7] == 1 then redis.call('XCLAIM', q, cap, consumer, 0, id, 'JUSTID') end
  end
end
return gone
"""
)
