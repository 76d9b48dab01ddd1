-- cost_record: count one invocation in its function's cost hash (broker.cost).
-- A hash of another type is moved aside first and a field that is not a count (digits, at most 18)
-- is counted again from 0, so the increments never fail.
-- include: move
-- KEYS[1] cost: the function's cost hash, lambdalite:cost:<function>
-- KEYS[2] cost_aside: where a cost key of another type is moved (quarantine.aside)
-- ARGV[1] quarantine_keep: seconds a moved-aside value is kept
-- ARGV[2] quarantine_mark: the first word of a reply that tells of a move (quarantine.report)
-- ARGV[3] requests: added to the field requests (1)
-- ARGV[4] billed_ms: added to billed_ms, the invocation's billed milliseconds
-- ARGV[5] mb_ms: added to mb_ms, its configured memory (MB) times billed_ms
-- ARGV[6] inits: added to inits, 1 for a cold start, else 0
-- ARGV[7] init_ms: added to init_ms, the cold start's INIT milliseconds (rounded up), else 0
-- Returns: what the guard moved, {mark, key, problem, action}, or an empty table.
local out = {}
local move = mover(ARGV[1], ARGV[2], out)
move(KEYS[1], KEYS[2], 'hash')
local fields = {'requests', 'billed_ms', 'mb_ms', 'inits', 'init_ms'}
for i, field in ipairs(fields) do
  local value = redis.call('HGET', KEYS[1], field)
  if value and (not string.match(value, '^%d+$') or #value > 18) then redis.call('HDEL', KEYS[1], field) end
  redis.call('HINCRBY', KEYS[1], field, ARGV[i + 2])
end
return out
