-- quarantine_incr: HINCRBY that cannot fail on what the hash or the field holds.
-- A hash of another type is moved aside first; a field that is not a non-negative count (digits, at
-- most 18) is dropped, so it is counted again from 0.
-- include: move
-- KEYS[1] hash: a hash of counters
-- KEYS[2] hash_aside: where a hash key of another type is moved (quarantine.aside)
-- ARGV[1] quarantine_keep: seconds a moved-aside value is kept
-- ARGV[2] quarantine_mark: the first word of a reply that tells of a move (quarantine.report)
-- ARGV[3] field: the counter
-- ARGV[4] increment: what to add to it
-- Returns: what it moved or reset, {mark, key, problem, action, ...}, or an empty table.
local out = {}
local move = mover(ARGV[1], ARGV[2], out)
move(KEYS[1], KEYS[2], 'hash')
local value = redis.call('HGET', KEYS[1], ARGV[3])
if value and (not string.match(value, '^%d+$') or #value > 18) then
  redis.call('HDEL', KEYS[1], ARGV[3])
  if #out == 0 then table.insert(out, ARGV[2]) end
  table.insert(out, KEYS[1])
  table.insert(out, "has field '" .. ARGV[3] .. "' = '" .. string.sub(value, 1, 40) .. "', not a count")
  table.insert(out, 'counted again from 0')
end
redis.call('HINCRBY', KEYS[1], ARGV[3], ARGV[4])
return out
