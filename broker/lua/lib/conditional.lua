-- conditional: the body of broker.conditional's scripts, for the condition scripts that include it.
-- conditional(keys, argv, check) reads the layout below from a script's KEYS and ARGV, runs
-- check(r, c) on the keys the condition reads r and its other arguments c, and only if it holds
-- moves aside the guarded keys of another type (mover, of move.lua) and runs the commands. check
-- returns whether to apply the writes and optionally a table handed back either way.
-- KEYS: pairs of a key to guard and its aside; then the keys the condition reads; then every other
-- key the commands name. A key the commands write with a command that needs one type (RPUSH, HSET,
-- ...) is among the guarded pairs (broker.transaction learns them as they are queued), one any type
-- takes (SET, DEL, EXPIRE) among the others: every key the script touches is in KEYS.
-- ARGV: keep, mark (as move.lua), the number of guarded pairs, the number of keys read, the type of
-- each guarded key, the number of condition arguments and the arguments, then each command as its
-- number of words and its words.
-- Returns: nothing; defines the local function conditional, which returns
-- {1 or 0 (applied), what the guard moved, the condition's value}.
local function conditional(keys, argv, check)
  local n, nr = tonumber(argv[3]), tonumber(argv[4])
  local r = {}
  for j = 1, nr do r[j] = keys[2 * n + j] end
  local i = 5 + n
  local nc = tonumber(argv[i])
  local c = {}
  for j = 1, nc do c[j] = argv[i + j] end
  i = i + nc + 1
  local ok, value = check(r, c)
  if not ok then return {0, {}, value or {}} end
  local moved = {}
  local move = mover(argv[1], argv[2], moved)
  for k = 1, n do move(keys[2 * k - 1], keys[2 * k], argv[4 + k]) end
  while i <= #argv do
    local argc = tonumber(argv[i])
    redis.call(unpack(argv, i + 1, i + argc))
    i = i + argc + 1
  end
  return {1, moved, value or {}}
end
