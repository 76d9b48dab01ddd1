-- registry_prune: one batch of the pruning of one of RQ's registries (broker.pruning).
-- Removes up to a batch of members whose score is past now, then, while the registry holds more than
-- the cap, up to a batch of the oldest with their job's keys. A registry of another type is moved
-- aside (and nothing else done). Keys derived inside the script from the registry's members (data the
-- caller has not read): the job hash, result stream and execution registry of each job dropped over
-- the cap (deleted; RQ 3.0's layout, from the prefixes below).
-- include: move
-- KEYS[1] registry: a registry, a sorted set of job ids scored by when they expire
-- KEYS[2] registry_aside: where a registry key of another type is moved (quarantine.aside)
-- ARGV[1] quarantine_keep: seconds a moved-aside value is kept
-- ARGV[2] quarantine_mark: the first word of a reply that tells of a move (quarantine.report)
-- ARGV[3] now: seconds since the epoch; members scored before it have expired
-- ARGV[4] batch: members looked at, at most, for each of the two removals
-- ARGV[5] cap: members the registry keeps at most (-1: no cap)
-- ARGV[6] job_prefix: the prefix of a job's hash (rq:job:)
-- ARGV[7] result_prefix: the prefix of a job's result stream
-- ARGV[8] executions_prefix: the prefix of a job's execution registry
-- Returns: {expired removed, over the cap removed, members left, what the guard moved}.
local key = KEYS[1]
local now, batch, cap = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
local job_prefix, result_prefix, execs_prefix = ARGV[6], ARGV[7], ARGV[8]
local moved = {}
mover(ARGV[1], ARGV[2], moved)(key, KEYS[2], 'zset')
if #moved > 0 then return {0, 0, 0, moved} end
local expired = redis.call('ZRANGEBYSCORE', key, '-inf', '(' .. now, 'LIMIT', 0, batch)
if #expired > 0 then redis.call('ZREM', key, unpack(expired)) end
local over = 0
if cap >= 0 then
  local extra = redis.call('ZCARD', key) - cap
  if extra > 0 then
    local oldest = redis.call('ZRANGE', key, 0, math.min(extra, batch) - 1)
    for _, id in ipairs(oldest) do
      redis.call('DEL', job_prefix .. id, result_prefix .. id, execs_prefix .. id)
    end
    redis.call('ZREM', key, unpack(oldest))
    over = #oldest
  end
end
return {#expired, over, redis.call('ZCARD', key), moved}
