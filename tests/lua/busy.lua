-- busy: keep Redis busy (answering nobody) for a while, for tests of timeouts.
-- ARGV[1] microseconds: how long, by Redis's clock
-- Returns: 1.
local t = redis.call('TIME')
repeat local n = redis.call('TIME') until (n[1] - t[1]) * 1000000 + (n[2] - t[2]) > tonumber(ARGV[1])
return 1
