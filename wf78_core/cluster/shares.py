"""Cluster-wide shares of the Redis Streams backend: tenants' turns and workflow
concurrency keys, both decided in Redis by the Lua scripts (one atomic step per
decision), so they hold across every process and host of a namespace.

**Fair shares.** A ready task does not enter its stream at once: it waits in its run's
tenant's *lane* of that stream (``P fr:<capability>:<level><US><tenant>``, a list, FIFO),
and the stream's *ring* (``P fr:<capability>:<level>``, a list of the tenants whose lane
holds something, whose turn first) says whose turn it is. A worker's ``TAKE`` moves tasks
from the lanes into the stream only when the stream has nothing undelivered left, and no
more than the worker asked for, one tenant's turn at a time (``[engine.fair_weights]``
tasks in a row, kept in ``P fw``; the turn's remaining credit in ``P fc:<capability>:
<level>``), so the stream holds at most one batch ahead and the turn order decides what
every worker of the cluster takes next. A tenant whose lane was empty joins the ring at
the back: a tenant's one task waits at most one turn of each tenant already waiting
(plus the tasks already moved into the stream: one batch). The tenant of a run is the
``fair_by`` field of the identity that started it; schedules, events and runs started
without one are the tenant ``""``, one tenant like any other. A task keeps the time it
became ready (the entry's ``m``), so aging counts its wait in the lane. A task takes its
workflow's ``max_concurrent`` lease as it enters the stream (waiting in a lane holds
none); when the workflow is full it waits in the workflow's wait set, ordered by level,
then by its tenant's *round* (``P wr:<workflow>``: a tenant's n-th waiting task is in
round n / weight, never before the round being served), so that wait takes turns too.
Entries in the stream, in flight and taken over (``XAUTOCLAIM``) are as before.

**Concurrency keys.** A run of a workflow with ``concurrency_key``/``max_per_key`` holds
one of its key value's ``max_per_key`` slots (``P ck:<workflow><US><value>``, a set of
run ids; ``P kmax:<workflow>`` the size) from its start until it ends, wherever its tasks
run. A run that finds them all taken is stored ``pending`` with none of its tasks queued
and waits in the key's queue (``P ckq:<workflow><US><value>``, a sorted set by priority,
FIFO inside a level). The step that ends a run (its last task's completion, a cancel)
frees its slot and starts the next waiting run of that key in the same Lua call: no
polling, and nothing accepted is lost (a waiting run lives in Redis like any other). A
worker that dies does not take a slot with it: its tasks are taken over and the run goes
on to its end, which frees the slot. ``P cks`` names the key values in use; the
reconciler drops slots and places of runs that are no longer running or waiting (drift
after a lost write) and starts what may start.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import msgspec

from wf78_core.cluster.wire import Graph, json_encode
from wf78_core.core.concurrency_keys import PREFIX, key_value
from wf78_core.definitions import WorkflowDefinition
from wf78_core.errors import Wf78Error

__all__ = ["KEYED", "LANES", "REFILL", "run_key_of", "start_row"]


def start_row(
    run_id: str,
    workflow: WorkflowDefinition,
    graph: Graph,
    context: Mapping[str, Any],
    priority: int,
    created: float,
    waited: bool,
    tenant: str,
    weights: Mapping[str, int],
) -> list[Any]:
    """What ``START`` (wf78_core.cluster.scripts) takes of one run: its id, workflow,
    level, ``max_concurrent``, context (JSON text: :class:`Wf78Error` when it cannot be),
    creation time, whether it is waited for, its tasks; then its tenant (whose turns its
    tasks wait in), its concurrency key value and the error that fails it at once
    (:func:`run_key_of`), ``max_per_key`` (0: no key) and the tenant's weight."""
    try:
        text = json_encode(context).decode()
    except (TypeError, msgspec.EncodeError) as error:
        raise Wf78Error(f"the run context cannot be kept in redis as JSON: {error}") from None
    return [
        run_id,
        workflow.id,
        priority,
        max(1, workflow.max_concurrent),
        text,
        repr(created),
        int(waited),
        graph.rows,
        tenant,
        *run_key_of(workflow, context),
        (workflow.max_per_key or 1) if workflow.concurrency_key else 0,
        weights.get(tenant, 1),
    ]


def run_key_of(workflow: WorkflowDefinition, context: Mapping[str, Any]) -> tuple[str, str]:
    """The run's concurrency key value and the error that fails it at once instead
    (``""``: none): a keyed workflow's run whose context lacks the field (or has it
    null) fails naming it, as in process (wf78_core.core.concurrency_keys)."""
    path = workflow.concurrency_key
    if not path:
        return "", ""
    value = key_value(path, context)
    if value is None:
        field = path.removeprefix(PREFIX)
        why = f"concurrency_key {path!r}: the run's context has no {field!r} (or it is null)"
        return "", why
    return value, ""


# Lanes and turns (needs P, SEP, NOW). The lane entry: ready time ms, run, task, workflow.
LANES = r"""
local function turns_of(cap, level) return P .. 'fr:' .. cap .. ':' .. level end

local function lane_push(cap, level, tenant, run, task, wf)
  local turns = turns_of(cap, level)
  local entry = NOW .. SEP .. run .. SEP .. task .. SEP .. wf
  if redis.call('RPUSH', turns .. SEP .. tenant, entry) == 1 then
    redis.call('RPUSH', turns, tenant)
  end
end

-- Tasks waiting in the lanes of one stream.
local function lane_depth(cap, level)
  local turns = turns_of(cap, level)
  local n = 0
  for _, tenant in ipairs(redis.call('LRANGE', turns, 0, -1)) do
    n = n + redis.call('LLEN', turns .. SEP .. tenant)
  end
  return n
end

-- A task over its workflow's max_concurrent waits in the workflow's wait set: by level,
-- then by its tenant's round (a tenant's n-th waiting task of weight w is in round n / w,
-- and never in a round before the one being served: a tenant that starts waiting joins
-- the current round), then FIFO.
local function wait_add(wf, level, run, task, cap, tenant)
  local rounds = P .. 'wr:' .. wf
  tenant = tenant or ''
  local weight = tonumber(redis.call('HGET', P .. 'fw', tenant)) or 1
  local now = (tonumber(redis.call('HGET', rounds, SEP)) or 0) * weight
  local n = math.max((tonumber(redis.call('HGET', rounds, tenant)) or -1) + 1, now)
  redis.call('HSET', rounds, tenant, n)
  local order = string.format('%012d%016d', math.floor(n / weight),
    redis.call('INCR', P .. 'seq'))
  redis.call('ZADD', P .. 'wait:' .. wf, level,
    order .. SEP .. run .. SEP .. task .. SEP .. cap)
end

-- A waiting task left the wait set: its round is the one being served.
local function wait_served(wf, order)
  if #order == 28 then
    redis.call('HSET', P .. 'wr:' .. wf, SEP, tonumber(string.sub(order, 1, 12)))
  end
end
"""

# TAKE's refill of a stream from its lanes (needs COMMON: room, lease_key, wait_add).
REFILL = r"""
-- Moves up to ``count`` tasks from the lanes into stream ``q``, taking turns: the tenant
-- at the front of the ring gives its weight's worth (all it has when alone), then goes
-- to the back (or leaves the ring once its lane is empty). A task takes a lease of its
-- workflow as it enters the stream, or waits in the workflow's wait set when it is full
-- (at most count + 64 such tries per call: the bell rings for the rest). Returns how many
-- entered the stream.
local function refill(q, cap, level, count)
  local turns = turns_of(cap, level)
  local credit_key = P .. 'fc:' .. cap .. ':' .. level
  local moved, tries = 0, 0
  while moved < count do
    if tries >= count + 64 then
      rung = true
      break
    end
    local tenant = redis.call('LINDEX', turns, 0)
    if not tenant then break end
    local lane = turns .. SEP .. tenant
    -- Alone, it takes what is asked; else its turn's credit (its weight at first).
    local alone = redis.call('LLEN', turns) == 1
    local want, credit = count - moved, 0
    if not alone then
      credit = tonumber(redis.call('GET', credit_key))
        or tonumber(redis.call('HGET', P .. 'fw', tenant)) or 1
      if want > credit then want = credit end
    end
    local items = redis.call('LPOP', lane, want)
    if items then
      for _, item in ipairs(items) do
        local ms, run, task, wf = string.match(item,
          '^([^\031]*)\031([^\031]*)\031(.*)\031([^\031]*)$')
        tries = tries + 1
        if room(wf) then
          redis.call('ZADD', lease_key(wf), 'inf', run .. SEP .. task)
          redis.call('XADD', q, '*', 'r', run, 't', task, 'w', wf, 'm', ms)
          moved = moved + 1
        else
          wait_add(wf, level, run, task, cap, tenant)
        end
      end
      credit = credit - #items
    end
    if not items or redis.call('EXISTS', lane) == 0 then
      redis.call('LPOP', turns)
      redis.call('DEL', credit_key)
    elseif alone then
      credit = 0  -- nobody to take turns with: the credit is left as it was
    elseif credit <= 0 then
      redis.call('LMOVE', turns, turns, 'LEFT', 'RIGHT')
      redis.call('DEL', credit_key)
    else
      redis.call('SET', credit_key, credit)
    end
  end
  return moved
end
"""

# Concurrency keys (needs P, SEP, NOW_S, admit, fields_of).
KEYED = r"""
local function key_names(wf, key)
  local base = wf .. SEP .. key
  return P .. 'ck:' .. base, P .. 'ckq:' .. base, base
end

local function key_most(wf)
  return tonumber(redis.call('GET', P .. 'kmax:' .. wf)) or 1
end

-- Queues the ready tasks of a run that may now run: pending, every dependency done.
local function begin(rk, run)
  local f = fields_of(redis.call('HGETALL', rk))
  for name, state in pairs(f) do
    if state == 'pending' and string.sub(name, 1, 2) == 's:' then
      local task = string.sub(name, 3)
      if tonumber(f['n:' .. task]) == 0 then
        redis.call('HSET', rk, name, 'queued')
        admit(run, task, f['c:' .. task], f['pri'], f['wf'], f['tn'] or '')
      end
    end
  end
end

-- The run takes a slot of its key (true), or waits for one: stored pending (false).
local function key_enter(rk, run, wf, key, level)
  local holders, queue, base = key_names(wf, key)
  redis.call('SADD', P .. 'cks', base)
  if redis.call('SCARD', holders) < key_most(wf) then
    redis.call('SADD', holders, run)
    return true
  end
  local member = string.format('%016d', redis.call('INCR', P .. 'seq')) .. SEP .. run
  redis.call('ZADD', queue, level, member)
  redis.call('HSET', rk, 'st', 'pending', 'ckw', member)
  return false
end

-- Free slots of a key go to its most urgent waiting runs, which start now.
local function key_promote(wf, key)
  local holders, queue, base = key_names(wf, key)
  local most = key_most(wf)
  while redis.call('SCARD', holders) < most do
    local top = redis.call('ZPOPMIN', queue)
    if #top == 0 then break end
    local run = string.match(top[1], '\031(.*)$')
    local rk = P .. 'run:' .. run
    if redis.call('HGET', rk, 'st') == 'pending' then
      redis.call('SADD', holders, run)
      redis.call('HSET', rk, 'st', 'running', 'sa', NOW_S)
      redis.call('HDEL', rk, 'ckw')
      begin(rk, run)
    end
  end
  if redis.call('EXISTS', holders) == 0 and redis.call('EXISTS', queue) == 0 then
    redis.call('SREM', P .. 'cks', base)
  end
end

-- The run ended (or was cancelled): its slot, or its place in line, goes.
local function key_leave(rk, run)
  local v = redis.call('HMGET', rk, 'ck', 'wf', 'ckw')
  if not v[1] then return end
  local holders, queue = key_names(v[2], v[1])
  if v[3] then
    redis.call('ZREM', queue, v[3])
    redis.call('HDEL', rk, 'ckw')
  end
  redis.call('SREM', holders, run)
  key_promote(v[2], v[1])
end

-- Drift: slots of runs no longer running, places of runs no longer waiting. Returns
-- how many were dropped.
local function key_repair()
  local dropped = 0
  for _, base in ipairs(redis.call('SRANDMEMBER', P .. 'cks', 1000)) do
    local wf, key = string.match(base, '^([^\031]*)\031(.*)$')
    if wf then
      local holders, queue = key_names(wf, key)
      for _, run in ipairs(redis.call('SMEMBERS', holders)) do
        if redis.call('HGET', P .. 'run:' .. run, 'st') ~= 'running' then
          redis.call('SREM', holders, run)
          dropped = dropped + 1
        end
      end
      for _, member in ipairs(redis.call('ZRANGE', queue, 0, -1)) do
        local run = string.match(member, '\031(.*)$')
        if redis.call('HGET', P .. 'run:' .. run, 'st') ~= 'pending' then
          redis.call('ZREM', queue, member)
          dropped = dropped + 1
        end
      end
      key_promote(wf, key)
    else
      redis.call('SREM', P .. 'cks', base)
    end
  end
  return dropped
end

-- Runs waiting for a slot of their key, per level (what stats() counts as queued).
local function key_depth(depth)
  for _, base in ipairs(redis.call('SMEMBERS', P .. 'cks')) do
    local pair = redis.call('ZRANGE', P .. 'ckq:' .. base, 0, -1, 'WITHSCORES')
    for k = 2, #pair, 2 do depth[pair[k]] = (depth[pair[k]] or 0) + 1 end
  end
end
"""
