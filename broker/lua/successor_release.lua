-- successor_release: apply the successor staged after an event (broker.successors), if it is whole
-- and its deadline has not passed: store and queue its job, set its fields, add its counters, wake
-- the scaler, and delete the staged hash. A staged hash missing a part is left alone.
-- Keys derived inside the script from the staged hash's data, which the caller does not know: the
-- job hash, the queue (list), the set of queues, the fields' hash, the counters' hash (and the asides
-- of those of another type, aside_of); a channel is published on.
-- include: move
-- KEYS[1] staged: the staged successor, lambdalite:successor:<event id>
-- KEYS[2] staged_aside: where a staged key of another type is moved (quarantine.aside)
-- ARGV[1] quarantine_keep: seconds a moved-aside value is kept
-- ARGV[2] quarantine_mark: the first word of a reply that tells of a move (quarantine.report)
-- ARGV[3] quarantine_prefix: the prefix of a derived key's aside (quarantine.derive_args)
-- ARGV[4] quarantine_stamp: the stamp of a derived key's aside
-- ARGV[5] now: seconds since the epoch; a successor staged with an earlier deadline is not applied
-- Returns: what the guard moved or reset, {mark, key, problem, action, ...}, or an empty table.
local out = {}
local move = mover(ARGV[1], ARGV[2], out)
local function guard(key, expected) move(key, aside_of(ARGV[3], ARGV[4], key), expected) end
move(KEYS[1], KEYS[2], 'hash')
local raw = redis.call('HGETALL', KEYS[1])
if #raw == 0 then return out end
local s, job, fields, counts = {}, {}, {}, {}
for i = 1, #raw, 2 do
  local name, value = raw[i], raw[i + 1]
  local kind, rest = string.sub(name, 1, 2), string.sub(name, 3)
  if kind == 'j:' then table.insert(job, rest); table.insert(job, value)
  elseif kind == 'h:' then table.insert(fields, rest); table.insert(fields, value)
  elseif kind == 'n:' then
    if not string.match(value, '^%d+$') or #value > 18 then return out end
    table.insert(counts, rest); table.insert(counts, value)
  else s[name] = value end
end
for _, part in ipairs({'by', 'id', 'job', 'queue', 'queues', 'hash', 'stats'}) do
  if not s[part] then return out end
end
if #job == 0 or not tonumber(s['by']) or tonumber(ARGV[5]) > tonumber(s['by']) then return out end
guard(s['job'], 'hash')
guard(s['queue'], 'list')
guard(s['queues'], 'set')
guard(s['hash'], 'hash')
guard(s['stats'], 'hash')
redis.call('HSET', s['job'], unpack(job))
redis.call('RPUSH', s['queue'], s['id'])
redis.call('SADD', s['queues'], s['queue'])
if #fields > 0 then redis.call('HSET', s['hash'], unpack(fields)) end
for i = 1, #counts, 2 do
  local field = counts[i]
  local value = redis.call('HGET', s['stats'], field)
  if value and (not string.match(value, '^%d+$') or #value > 18) then
    redis.call('HDEL', s['stats'], field)
    if #out == 0 then table.insert(out, ARGV[2]) end
    table.insert(out, s['stats'])
    table.insert(out, "has field '" .. field .. "' = '" .. string.sub(value, 1, 40) .. "', not a count")
    table.insert(out, 'counted again from 0')
  end
  redis.call('HINCRBY', s['stats'], field, counts[i + 1])
end
if s['wake'] then redis.call('PUBLISH', s['wake'], s['name'] or '') end
redis.call('DEL', KEYS[1])
return out
