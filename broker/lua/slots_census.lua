-- slots_census: one function's census for a scaling step, and a slot taken if asked (workers.slots).
-- Counts the function's workers across every live scaler, and with take = "1" takes one more slot
-- if that stays within the cap. This scaler's own count is set to mine, the workers it has (so the
-- count heals itself if it was lost or damaged); the slots of scalers whose liveness key expired are
-- dropped, and so is a count that is not one (returned, for the log). A key of the wrong type is
-- moved aside first. Read inside the script, derived from the slots hash's fields (scaler ids): each
-- other scaler's liveness key (EXISTS only).
-- include: move
-- KEYS[1] slots: the function's slots hash, a count of workers per scaler id
-- KEYS[2] queue: the function's queue (a list; LLEN)
-- KEYS[3] started: its started registry (a sorted set; ZCARD)
-- KEYS[4] slots_aside: where a slots key of another type is moved (quarantine.aside)
-- KEYS[5] queue_aside: where a queue key of another type is moved
-- KEYS[6] started_aside: where a started key of another type is moved
-- ARGV[1] quarantine_keep: seconds a moved-aside value is kept
-- ARGV[2] quarantine_mark: the first word of a reply that tells of a move (quarantine.report)
-- ARGV[3] scaler_id: this scaler's id, its field in the slots hash
-- ARGV[4] cap: the most workers the function may have across every scaler
-- ARGV[5] alive_prefix: the prefix of a scaler's liveness key (+ its id)
-- ARGV[6] take: "1" to take one more slot, else "0"
-- ARGV[7] mine: the workers this scaler has of the function
-- Returns: {workers, taken (1 or 0), {scaler id, bad count, ...}, queued, running, what the guard moved}.
local moved = {}
local move = mover(ARGV[1], ARGV[2], moved)
move(KEYS[1], KEYS[4], 'hash')
move(KEYS[2], KEYS[5], 'list')
move(KEYS[3], KEYS[6], 'zset')
local me, mine = ARGV[3], ARGV[7]
if redis.call('HGET', KEYS[1], me) ~= mine then
  redis.call('HSET', KEYS[1], me, mine)
end
local total = tonumber(mine)
local bad = {}
local fields = redis.call('HGETALL', KEYS[1])
for i = 1, #fields, 2 do
  if fields[i] ~= me then
    local alive = redis.call('EXISTS', ARGV[5] .. fields[i]) == 1
    local count = string.match(fields[i + 1], '^%d+$') and #fields[i + 1] < 10
    if alive and count then
      total = total + tonumber(fields[i + 1])
    else
      redis.call('HDEL', KEYS[1], fields[i])
      if alive then
        table.insert(bad, fields[i])
        table.insert(bad, string.sub(fields[i + 1], 1, 40))
      end
    end
  end
end
local taken = 0
if ARGV[6] == "1" and total < tonumber(ARGV[4]) then
  redis.call('HINCRBY', KEYS[1], me, 1)
  total, taken = total + 1, 1
end
return {total, taken, bad, redis.call('LLEN', KEYS[2]), redis.call('ZCARD', KEYS[3]), moved}
