-- stats_read: the counts of many functions in one command (broker.stats); read-only, so it may run on
-- a replica too.
-- KEYS[1..] functions: per function, four keys: its queue (LLEN), its started registry (ZCARD), its
--   counters (HGETALL) and its scaler views (HGETALL), in that order
-- Returns: per key, LLEN, ZCARD or HGETALL's flat list; false (nil) for a key of another type.
local out = {}
local read = {'LLEN', 'ZCARD', 'HGETALL', 'HGETALL'}
for i, key in ipairs(KEYS) do
  local reply = redis.pcall(read[(i - 1) % 4 + 1], key)
  if type(reply) == 'table' and reply.err then out[i] = false else out[i] = reply end
end
return out
