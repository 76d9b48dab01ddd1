-- utc_of: the take script's utc (broker/lua/lib/utc.lua) of a Unix time, for tests/test_taking.py.
-- include: utc
-- ARGV[1] sec: seconds since the epoch
-- ARGV[2] usec: microseconds
-- Returns: the time in RQ's timestamp format.
return utc(tonumber(ARGV[1]), tonumber(ARGV[2]))
