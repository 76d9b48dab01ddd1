-- quarantine_guard: move aside each of the given keys that holds another type than it must.
-- include: move
-- KEYS[1..] guarded: pairs of a key and its aside (quarantine.aside), for each key to guard
-- ARGV[1] quarantine_keep: seconds a moved-aside value is kept
-- ARGV[2] quarantine_mark: the first word of a reply that tells of a move (quarantine.report)
-- ARGV[3..] types: the type each guarded key must have, one per pair of KEYS, in their order
-- Returns: what it moved, {mark, key, problem, action, ...}, or an empty table.
local out = {}
local move = mover(ARGV[1], ARGV[2], out)
for i = 1, #KEYS, 2 do move(KEYS[i], KEYS[i + 1], ARGV[2 + (i + 1) / 2]) end
return out
