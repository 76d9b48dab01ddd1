-- logs_record: store one invocation's log lines in its function's stream and index (broker.logstore).
-- A key of another type is moved aside first, so the write never fails.
-- include: move
-- KEYS[1] stream: the function's log stream, lambdalite:logs:<function>
-- KEYS[2] index: its index of request ids by entry millisecond, lambdalite:logs-index:<function>
-- KEYS[3] stream_aside: where a stream key of another type is moved (quarantine.aside)
-- KEYS[4] index_aside: where an index key of another type is moved
-- ARGV[1] quarantine_keep: seconds a moved-aside value is kept
-- ARGV[2] quarantine_mark: the first word of a reply that tells of a move (quarantine.report)
-- ARGV[3] request_id: the invocation's request id (field r)
-- ARGV[4] lines: its lines as JSON [[epoch_ms, text], ...] (field l)
-- ARGV[5] cap: entries the stream keeps, about (XADD MAXLEN ~)
-- ARGV[6] index_cap: entries the index keeps
-- ARGV[7] keep: seconds both keys live after this write
-- Returns: what the guard moved, {mark, key, problem, action, ...}, or an empty table.
local out = {}
local move = mover(ARGV[1], ARGV[2], out)
move(KEYS[1], KEYS[3], 'stream')
move(KEYS[2], KEYS[4], 'zset')
local id = redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[5], '*', 'r', ARGV[3], 'l', ARGV[4])
redis.call('ZADD', KEYS[2], tonumber(string.match(id, '^(%d+)')), ARGV[3])
redis.call('ZREMRANGEBYRANK', KEYS[2], 0, -tonumber(ARGV[6]) - 1)
redis.call('EXPIRE', KEYS[1], ARGV[7])
redis.call('EXPIRE', KEYS[2], ARGV[7])
return out
