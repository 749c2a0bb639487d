"""The Lua scripts of the Redis Streams backend (see :mod:`wf78_core.cluster.streams`):
the common part, and those that start, end, cancel and reopen runs (the workers' own, to
take, hold and take over tasks, are in :mod:`wf78_core.cluster.work_scripts`).

Every script changes run state, leases and streams in one atomic step, so a process that
dies between two calls never leaves a run half-updated. Each script is called with one
key, ``<prefix>stats``, which names the hash slot (the prefix carries a ``{hash tag}``:
every key of one namespace lives in one slot, so Redis Cluster runs the scripts whole),
and with the prefix and the finished-run TTL as its first two arguments.

Keys under the prefix ``P``:

``P q:<capability>:<level>``
    a stream per capability and priority level; its consumer group is the capability;
    entries carry ``r`` (run), ``t`` (task), ``w`` (workflow) and ``m`` (when the task
    became ready, ms); acknowledged entries are deleted, so the stream holds only
    undelivered (at most a batch, moved in from the lanes by TAKE) and in-flight work
``P fr:<capability>:<level>``, ``P fr:<capability>:<level><US><tenant>``, ``P fc:...``, ``P fw``
    the stream's turn order of tenants, each tenant's lane of ready tasks (a ready task
    waits there until TAKE moves it into the stream in its tenant's turn), the credit
    left to the tenant whose turn it is, the tenants' weights
    (:mod:`wf78_core.cluster.shares`)
``P levels:<capability>``, ``P caps``
    the levels and capabilities that have a stream
``P run:<id>``
    a hash per run: ``wf st pri ctx cr sa fi err left nf``, ``tn`` its tenant, ``ck`` its
    concurrency key value (``ckw`` its place while it waits for a slot), and per task ``s:`` state,
    ``n:`` dependencies not yet done, ``c:`` capability, ``a:`` attempts, ``r:`` result,
    ``e:`` error, ``d:`` data source, ``ts:``/``tf:`` start and finish times
``P lease:<workflow>``
    a sorted set of the workflow's leases (``run<US>task``), scored by expiry in ms;
    ``+inf`` while the task waits in its stream, ``now + lease_ttl`` once a worker holds it
    (a task takes its lease as it enters the stream: waiting in a lane holds none)
``P wait:<workflow>``, ``P wr:<workflow>``
    tasks ready but over ``max_concurrent``, scored by level, then in their tenants'
    rounds, FIFO within a round; the rounds given to each tenant and the one served
``P ck:<workflow><US><value>``, ``P ckq:...``, ``P cks``, ``P kmax:<workflow>``
    a concurrency key value's running runs and its waiting runs (by level, FIFO), the
    key values in use, the workflow's ``max_per_key``
``P mc:<workflow>``, ``P wfs``
    the workflow's ``max_concurrent``; the workflows seen
``P hb:<consumer>``
    a worker's heartbeat (expires after ``lease_ttl``)
``P dead``, ``P recent``, ``P seq``
    dead letters by id; run ids by creation time; the wait-set sequence
"""

from __future__ import annotations

from wf78_core.cluster.shares import KEYED, LANES

__all__ = ["CANCEL", "COMMON", "COMPLETE", "DEPTHS", "RECONCILE", "REOPEN", "SCRIPTS", "START"]

#: the scripts of this module, by name
SCRIPTS = ("CANCEL", "COMPLETE", "DEPTHS", "RECONCILE", "REOPEN", "START")

# ARGV[1] = the key prefix, ARGV[2] = seconds a finished run is kept.
COMMON = (
    r"""
local P = ARGV[1]
local RUN_TTL = tonumber(ARGV[2])
local SEP = '\031'
local clock = redis.call('TIME')
local NOW = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
local NOW_S = clock[1] .. '.' .. string.format('%06d', tonumber(clock[2]))
local rung = false

local function qkey(cap, level) return P .. 'q:' .. cap .. ':' .. level end
local function lease_key(wf) return P .. 'lease:' .. wf end
-- Asked once per script call: nothing else changes them while a script runs.
local limits, streams = {}, {}
local function limit_of(wf)
  local limit = limits[wf]
  if limit == nil then
    limit = tonumber(redis.call('GET', P .. 'mc:' .. wf)) or 1e15
    limits[wf] = limit
  end
  return limit
end
local function fields_of(flat)
  local f = {}
  for i = 1, #flat, 2 do f[flat[i]] = flat[i + 1] end
  return f
end

"""
    + LANES
    + r"""
-- The stream of a capability and level, made (with its consumer group) when first used.
local function stream_of(cap, level)
  local q = qkey(cap, level)
  if not streams[q] then
    if redis.call('EXISTS', q) == 0 then
      redis.pcall('XGROUP', 'CREATE', q, cap, '$', 'MKSTREAM')
      redis.call('ZADD', P .. 'levels:' .. cap, level, level)
      redis.call('SADD', P .. 'caps', cap)
    end
    streams[q] = true
  end
  return q
end

-- Whether the workflow has a lease free (expired leases are dropped only when it looks
-- full: they count only then).
local function room(wf)
  local lease = lease_key(wf)
  local limit = limit_of(wf)
  if redis.call('ZCARD', lease) < limit then return true end
  redis.call('ZREMRANGEBYSCORE', lease, '-inf', NOW)
  return redis.call('ZCARD', lease) < limit
end

-- A ready task waits in its tenant's lane of its stream; TAKE moves it into the stream
-- in its tenant's turn, with a lease of its workflow, or into the workflow's wait set
-- when the workflow is full (wf78_core.cluster.shares).
local function admit(run, task, cap, level, wf, tenant)
  stream_of(cap, level)
  lane_push(cap, level, tenant or '', run, task, wf)
  -- Ring (once per script call, whatever it queued): idle workers wait for the bell,
  -- busy ones come back for more by themselves. Rung whenever something was queued,
  -- not only when nothing was ready before: a worker may be idle while work waits for
  -- a busy one.
  rung = true
end

local function live(rk, task)
  return redis.call('HGET', rk, 'st') == 'running'
    and redis.call('HGET', rk, 's:' .. task) == 'queued'
end

-- Freed leases go to the most urgent waiting tasks of the workflow (by level, then the
-- tenants' rounds), straight into their streams.
local function promote(wf)
  local lease = lease_key(wf)
  redis.call('ZREMRANGEBYSCORE', lease, '-inf', NOW)
  local limit = limit_of(wf)
  local popped = false
  while redis.call('ZCARD', lease) < limit do
    local top = redis.call('ZPOPMIN', P .. 'wait:' .. wf)
    if #top == 0 then break end
    popped = true
    local order, run, task, cap = string.match(top[1],
      '^([^\031]*)\031([^\031]*)\031(.*)\031([^\031]*)$')
    if run and live(P .. 'run:' .. run, task) then
      redis.call('ZADD', lease, 'inf', run .. SEP .. task)
      redis.call('XADD', stream_of(cap, top[2]), '*', 'r', run, 't', task, 'w', wf)
      rung = true
      wait_served(wf, order)
    end
  end
  if popped and redis.call('EXISTS', P .. 'wait:' .. wf) == 0 then
    redis.call('DEL', P .. 'wr:' .. wf)
  end
end

local function release(wf, run, task)
  redis.call('ZREM', lease_key(wf), run .. SEP .. task)
  if redis.call('EXISTS', P .. 'wait:' .. wf) == 1 then promote(wf) end
end

local function drop(q, cap, id, wf, run, task)
  redis.call('XACK', q, cap, id)
  redis.call('XDEL', q, id)
  release(wf, run, task)
end

"""
    + KEYED
    + r"""
-- A run's last task ended: ``fields`` (the task's own, to set with the run's end) and
-- the run's status in one HSET. The caller adds the run to the stats' runs_finished.
-- ``keyed``: the run holds a slot of its concurrency key, which goes to the next run.
local function ended(rk, run, failed, waited, fields, keyed)
  local status = 'succeeded'
  if failed then status = 'failed' end
  fields[#fields + 1] = 'st'
  fields[#fields + 1] = status
  fields[#fields + 1] = 'fi'
  fields[#fields + 1] = NOW_S
  redis.call('HSET', rk, unpack(fields))
  redis.call('EXPIRE', rk, RUN_TTL)
  if keyed then key_leave(rk, run) end
  if waited == '1' then redis.call('PUBLISH', P .. 'done', run) end
end

-- Entries in the streams not yet delivered to any worker, per level.
local function undelivered()
  local depth = {}
  for _, cap in ipairs(redis.call('SMEMBERS', P .. 'caps')) do
    for _, level in ipairs(redis.call('ZRANGE', P .. 'levels:' .. cap, 0, -1)) do
      local q = qkey(cap, level)
      local groups = redis.pcall('XINFO', 'GROUPS', q)
      if type(groups) == 'table' and not groups.err then
        for _, g in ipairs(groups) do
          local f = fields_of(g)
          if f['name'] == cap then
            depth[level] = (depth[level] or 0) + redis.call('XLEN', q) - f['pending']
              + lane_depth(cap, level)
          end
        end
      end
    end
  end
  return depth
end

local function ring()
  if rung then redis.call('PUBLISH', P .. 'bell', '1') end
end
"""
)

# ARGV: prefix, ttl, runs (msgpack: a list of [run, workflow, level, max_concurrent,
# context JSON, created, waited (1: someone waits for the run's done message), tasks as
# [task, capability, unfinished dependencies], tenant, concurrency key value, the error
# that fails the run at once ('' none), max_per_key, the tenant's weight]), run history.
# Returns 1 per run stored, 0 per run id already known.
START = (
    COMMON
    + r"""
local history = tonumber(ARGV[4])
local answers, known, stored, refused = {}, {}, 0, 0  -- known: workflows, SEP tenants
for _, r in ipairs(cmsgpack.unpack(ARGV[3])) do
  local run, wf, level, tasks = r[1], r[2], tostring(r[3]), r[8]
  local tenant, key, why = r[9] or '', r[10] or '', r[11] or ''
  local rk = P .. 'run:' .. run
  if redis.call('EXISTS', rk) == 1 then
    answers[#answers + 1] = 0
  else
    if not known[wf] then
      known[wf] = true
      redis.call('SET', P .. 'mc:' .. wf, r[4])
      redis.call('SADD', P .. 'wfs', wf)
      if (r[12] or 0) > 0 then redis.call('SET', P .. 'kmax:' .. wf, r[12]) end
    end
    redis.call('HSET', rk, 'wf', wf, 'st', 'running', 'pri', level, 'ctx', r[5],
      'cr', r[6], 'sa', NOW_S, 'left', #tasks, 'nf', 0, 'w', r[7])
    if tenant ~= '' then
      redis.call('HSET', rk, 'tn', tenant)
      if not known[SEP .. tenant] then
        known[SEP .. tenant] = true
        if (r[13] or 1) > 1 then
          redis.call('HSET', P .. 'fw', tenant, r[13])
        else
          redis.call('HDEL', P .. 'fw', tenant)
        end
      end
    end
    local go = why == ''
    if go and key ~= '' then
      redis.call('HSET', rk, 'ck', key)
      go = key_enter(rk, run, wf, key, level)
      if not go then redis.call('HDEL', rk, 'sa') end
    end
    local roots, batch = {}, {}
    for _, t in ipairs(tasks) do
      local task, cap, remaining = t[1], t[2], t[3]
      local state = 'pending'
      if why ~= '' then
        state = 'skipped'
        for _, v in ipairs({'e:' .. task, why, 'tf:' .. task, NOW_S}) do batch[#batch + 1] = v end
      elseif remaining == 0 and go then
        state = 'queued'
        roots[#roots + 1] = t
      end
      for _, v in ipairs({'s:' .. task, state, 'c:' .. task, cap, 'n:' .. task, remaining}) do
        batch[#batch + 1] = v
      end
      if #batch >= 900 then
        redis.call('HSET', rk, unpack(batch))
        batch = {}
      end
    end
    if #batch > 0 then redis.call('HSET', rk, unpack(batch)) end
    if why ~= '' then
      -- No value for its concurrency key: failed at once, its tasks skipped.
      ended(rk, run, true, r[7] == 1 and '1' or '0', {'err', why, 'left', 0})
      refused = refused + 1
    end
    for _, root in ipairs(roots) do admit(run, root[1], root[2], level, wf, tenant) end
    redis.call('ZADD', P .. 'recent', r[6], run)
    answers[#answers + 1] = 1
    stored = stored + 1
  end
end
redis.call('ZREMRANGEBYRANK', P .. 'recent', 0, -history - 1)
redis.call('HINCRBY', KEYS[1], 'runs_started', stored)
if refused > 0 then redis.call('HINCRBY', KEYS[1], 'runs_finished', refused) end
ring()
return answers
"""
)

# ARGV: prefix, ttl, completions (msgpack: a list of [stream, capability, entry, run,
# task, workflow, consumer, outcome, result, error, run error, data source, extra
# attempts, dead-letter id, dead letter, followers]; followers are the dependants when
# the task succeeded, [task, error] pairs to skip when it failed). A report from a
# worker that no longer owns its entry (another took it over while it stalled, or the
# entry was lost) is stale and changes nothing; an outcome 'cancelled' (the worker
# interrupted the task: its run ended) only gives the entry back, and not while its run
# still runs it (the entry is then taken over). Returns how many runs finished.
COMPLETE = (
    COMMON
    + r"""
local finished, tasks = 0, 0
for _, c in ipairs(cmsgpack.unpack(ARGV[3])) do
  local q, cap, id, run, task, wf, owner = c[1], c[2], c[3], c[4], c[5], c[6], c[7]
  local outcome, result, err, runerr, ds = c[8], c[9], c[10], c[11], c[12]
  local extra, dead_id, dead, followers = c[13], c[14], c[15], c[16]
  local pending = redis.pcall('XPENDING', q, cap, id, id, 1)
  local rk = P .. 'run:' .. run
  local v = redis.call('HMGET', rk, 'st', 's:' .. task, 'pri', 'nf', 'w', 'left', 'tn', 'ck')
  local state = v[2]
  local live = v[1] == 'running' and (state == 'running' or state == 'queued')
  if type(pending) == 'table' and #pending == 1 and pending[1][2] == owner
    and not (outcome == 'cancelled' and live) then
    redis.call('XACK', q, cap, id)
    redis.call('XDEL', q, id)
    release(wf, run, task)
    if live and outcome ~= 'cancelled' then
      local nf = tonumber(v[4])
      local failed = nf > 0
      -- The task's end, the run's counters and (when it was the last) the run's end go
      -- in one HSET below; 'left' as read, less this task and the ones it skips.
      local left = tonumber(v[6]) - 1
      local fields = {'s:' .. task, outcome, 'tf:' .. task, NOW_S}
      if result ~= '' then fields[#fields + 1] = 'r:' .. task; fields[#fields + 1] = result end
      if err ~= '' then fields[#fields + 1] = 'e:' .. task; fields[#fields + 1] = err end
      if ds ~= '' then fields[#fields + 1] = 'd:' .. task; fields[#fields + 1] = ds end
      if extra ~= 0 then redis.call('HINCRBY', rk, 'a:' .. task, extra) end
      if outcome == 'succeeded' then
        local level = v[3]
        for _, dep in ipairs(followers) do
          if redis.call('HINCRBY', rk, 'n:' .. dep, -1) == 0
            and redis.call('HGET', rk, 's:' .. dep) == 'pending' then
            redis.call('HSET', rk, 's:' .. dep, 'queued')
            admit(run, dep, redis.call('HGET', rk, 'c:' .. dep), level, wf, v[7])
          end
        end
      else
        failed = true
        fields[#fields + 1] = 'nf'
        fields[#fields + 1] = nf + 1
        redis.call('HSETNX', rk, 'err', runerr)
        if dead_id ~= '' then redis.call('HSET', P .. 'dead', dead_id, dead) end
        for _, pair in ipairs(followers) do
          local dep = pair[1]
          local s = redis.call('HGET', rk, 's:' .. dep)
          if s == 'pending' or s == 'queued' then
            redis.call('HSET', rk, 's:' .. dep, 'skipped', 'e:' .. dep, pair[2], 'tf:' .. dep, NOW_S)
            left = left - 1
          end
        end
      end
      fields[#fields + 1] = 'left'
      fields[#fields + 1] = left
      tasks = tasks + 1
      if left <= 0 then
        ended(rk, run, failed, v[5], fields, v[8])
        finished = finished + 1
      else
        redis.call('HSET', rk, unpack(fields))
      end
    end
  end
end
if tasks > 0 then redis.call('HINCRBY', KEYS[1], 'tasks_finished', tasks) end
if finished > 0 then redis.call('HINCRBY', KEYS[1], 'runs_finished', finished) end
ring()
return finished
"""
)

# ARGV: prefix, ttl, run, reason.  -1: unknown run, 0: already finished, 1: cancelled.
CANCEL = (
    COMMON
    + r"""
local rk = P .. 'run:' .. ARGV[3]
local status = redis.call('HGET', rk, 'st')
if not status then return -1 end
if status ~= 'running' and status ~= 'pending' then return 0 end
local all = redis.call('HGETALL', rk)
local fields = {'err', ARGV[4], 'left', 0}
for k = 1, #all, 2 do
  local key, state = all[k], all[k + 1]
  if string.sub(key, 1, 2) == 's:' and
    (state == 'pending' or state == 'queued' or state == 'running') then
    local task = string.sub(key, 3)
    for _, v in ipairs({key, 'cancelled', 'e:' .. task, ARGV[4], 'tf:' .. task, NOW_S}) do
      fields[#fields + 1] = v
    end
  end
end
redis.call('HSET', rk, unpack(fields))
redis.call('HSET', rk, 'st', 'cancelled', 'fi', NOW_S)
redis.call('EXPIRE', rk, RUN_TTL)
-- Its concurrency key's slot (or its place waiting for one) goes to the next run.
key_leave(rk, ARGV[3])
ring()
redis.call('HINCRBY', KEYS[1], 'runs_finished', 1)
if redis.call('HGET', rk, 'w') == '1' then redis.call('PUBLISH', P .. 'done', ARGV[3]) end
-- Workers running its tasks interrupt them.
redis.call('PUBLISH', P .. 'bell', 'c:' .. ARGV[3])
return 1
"""
)

# ARGV: prefix, ttl, dead-letter id, run, tasks (msgpack: [[task, dependencies], ...],
# the dead letter's task first, then the dependants its failure may have skipped).
# Reopens a finished run for a dead letter: its task and the dependants it skipped go
# back to pending (ready ones are queued), the run runs again. -1: the run is gone,
# -2: no such dead letter, 0: the run is still running, 1: reopened.
REOPEN = (
    COMMON
    + r"""
local rk = P .. 'run:' .. ARGV[4]
local status = redis.call('HGET', rk, 'st')
if not status then return -1 end
if redis.call('HEXISTS', P .. 'dead', ARGV[3]) == 0 then return -2 end
if status == 'running' or status == 'pending' then return 0 end
local chosen = {}
for i, t in ipairs(cmsgpack.unpack(ARGV[5])) do
  if i == 1 or redis.call('HGET', rk, 's:' .. t[1]) == 'skipped' then
    chosen[#chosen + 1] = t
  end
end
local ready = {}
for _, t in ipairs(chosen) do
  local task, remaining = t[1], 0
  for _, dep in ipairs(t[2]) do
    if redis.call('HGET', rk, 's:' .. dep) ~= 'succeeded' then remaining = remaining + 1 end
  end
  redis.call('HDEL', rk, 'r:' .. task, 'e:' .. task, 'd:' .. task, 'ts:' .. task,
    'tf:' .. task, 'a:' .. task)
  redis.call('HSET', rk, 's:' .. task, 'pending', 'n:' .. task, remaining)
  if remaining == 0 then ready[#ready + 1] = task end
end
redis.call('HDEL', rk, 'err', 'fi')
redis.call('HINCRBY', rk, 'nf', -1)
redis.call('HINCRBY', rk, 'left', #chosen)
redis.call('HSET', rk, 'st', 'running', 'w', 0)
redis.call('PERSIST', rk)
redis.call('HDEL', P .. 'dead', ARGV[3])
redis.call('HINCRBY', KEYS[1], 'runs_finished', -1)
local v = redis.call('HMGET', rk, 'wf', 'pri', 'tn', 'ck')
local wf, level = v[1], v[2]
-- A keyed run takes a slot of its key again, or waits for one (its ready tasks stay
-- pending until then).
if not v[4] or key_enter(rk, ARGV[4], wf, v[4], level) then
  for _, task in ipairs(ready) do
    redis.call('HSET', rk, 's:' .. task, 'queued')
    admit(ARGV[4], task, redis.call('HGET', rk, 'c:' .. task), level, wf, v[3])
  end
end
ring()
return 1
"""
)

# ARGV: prefix, ttl. Repairs lease drift: leases of tasks no longer waiting in a stream
# (cancelled runs, entries lost with a flushed stream) are dropped; expired ones go;
# waiting tasks take the room. Returns how many leases were dropped.
RECONCILE = (
    COMMON
    + r"""
local dropped = 0
local ready = 0
for _, n in pairs(undelivered()) do ready = ready + n end
-- Work waiting: idle workers look (a bell message may have been lost).
if ready > 0 then rung = true end
for _, wf in ipairs(redis.call('SMEMBERS', P .. 'wfs')) do
  local lease = lease_key(wf)
  dropped = dropped + redis.call('ZREMRANGEBYSCORE', lease, '-inf', NOW)
  for _, member in ipairs(redis.call('ZRANGEBYSCORE', lease, 'inf', 'inf', 'LIMIT', 0, 1000)) do
    local run, task = string.match(member, '^([^\031]*)\031(.*)$')
    if not (run and live(P .. 'run:' .. run, task)) then
      redis.call('ZREM', lease, member)
      dropped = dropped + 1
    end
  end
  promote(wf)
end
dropped = dropped + key_repair()
ring()
return dropped
"""
)

# ARGV: prefix, ttl. Tasks ready but not taken per level (in streams or waiting for a
# lease), and tasks running per workflow (leases held by workers), as two flat lists;
# then the runs started and finished in the namespace.
DEPTHS = (
    COMMON
    + r"""
local depth = undelivered()
key_depth(depth)
for _, wf in ipairs(redis.call('SMEMBERS', P .. 'wfs')) do
  for _, pair in ipairs({redis.call('ZRANGE', P .. 'wait:' .. wf, 0, -1, 'WITHSCORES')}) do
    for k = 2, #pair, 2 do depth[pair[k]] = (depth[pair[k]] or 0) + 1 end
  end
end
local levels, running = {}, {}
for level, n in pairs(depth) do
  levels[#levels + 1] = level
  levels[#levels + 1] = n
end
for _, wf in ipairs(redis.call('SMEMBERS', P .. 'wfs')) do
  running[#running + 1] = wf
  running[#running + 1] = redis.call('ZCOUNT', lease_key(wf), NOW, '(inf')
end
return {levels, running, redis.call('HMGET', KEYS[1], 'runs_started', 'runs_finished')}
"""
)
