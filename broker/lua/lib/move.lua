-- move: the guard of broker.quarantine, for the scripts that include it.
-- mover(keep, mark, out) returns move(key, aside, expected): if key exists and holds a type other
-- than expected ('hash', 'list', 'set', 'zset', 'stream', 'string'), it is renamed to aside (kept
-- keep seconds), and out gets mark (once, first) then key, what is wrong, what was done: the reply
-- that quarantine.report reads. aside_of(prefix, stamp, key) names the aside of a key that a script
-- derives from data (the caller names the others: quarantine.aside).
-- Returns: nothing; defines the local functions mover and aside_of.
local function mover(keep, mark, out)
  return function(key, aside, expected)
    local found = redis.call('TYPE', key).ok
    if found ~= 'none' and found ~= expected then
      redis.call('RENAME', key, aside)
      redis.call('EXPIRE', aside, keep)
      if #out == 0 then table.insert(out, mark) end
      table.insert(out, key)
      table.insert(out, 'holds a ' .. found .. ', not a ' .. expected)
      table.insert(out, 'moved to ' .. aside)
    end
  end
end

local function aside_of(prefix, stamp, key)
  return prefix .. key .. ':' .. stamp
end

