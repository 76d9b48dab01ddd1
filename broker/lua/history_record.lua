-- history_record: count one invocation, or one sample of the gauges, in the buckets of a function's
-- history hash (broker.history). The first write makes every bucket of both rings, empty, so the
-- hash has its full size from then on. A bucket that does not parse, or holds an older window, is
-- started afresh, so the writes never fail; a hash of another type is moved aside first.
-- include: move
-- KEYS[1] history: the function's history hash, lambdalite:history:<function>
-- KEYS[2] history_aside: where a history key of another type is moved (quarantine.aside)
-- ARGV[1] quarantine_keep: seconds a moved-aside value is kept
-- ARGV[2] quarantine_mark: the first word of a reply that tells of a move (quarantine.report)
-- ARGV[3] kind: 'inv' (an invocation) or 'gauge' (a sample)
-- ARGV[4] figure1: inv: 1 if it failed, else 0; gauge: concurrent executions
-- ARGV[5] figure2: inv: 1 if it was dead-lettered, else 0; gauge: jobs queued
-- ARGV[6] figure3: inv: its duration (ms); gauge: the oldest queued event's age (ms)
-- ARGV[7] figure4: inv: its event's age when it ended (ms); gauge: throttles since the last sample
-- ARGV[8] now: seconds since the epoch
-- ARGV[9] ttl: seconds the hash lives after this write
-- ARGV[10] hour_prefix: the field prefix of the ring of minutes
-- ARGV[11] hour_width: its buckets' width (seconds)
-- ARGV[12] hour_slots: its number of buckets
-- ARGV[13] day_prefix: the field prefix of the ring of five minutes
-- ARGV[14] day_width: its buckets' width (seconds)
-- ARGV[15] day_slots: its number of buckets
-- ARGV[16] nfields: the figures of a bucket (history.FIELDS), each a big-endian 32-bit integer
-- ARGV[17] nbins: the duration bins that follow them (history.BINS)
-- Returns: what the guard moved, {mark, key, problem, action}, or an empty table.
local nfields, nbins = tonumber(ARGV[16]), tonumber(ARGV[17])
local rings = {{ARGV[10], tonumber(ARGV[11]), tonumber(ARGV[12])},  -- prefix, width, slots
               {ARGV[13], tonumber(ARGV[14]), tonumber(ARGV[15])}}
local fmt = '>' .. string.rep('I4', nfields + nbins)
local out = {}
mover(ARGV[1], ARGV[2], out)(KEYS[1], KEYS[2], 'hash')
if redis.call('EXISTS', KEYS[1]) == 0 then
  -- the whole hash at once, every bucket empty (window start 0): its size is fixed from the first write
  local empty, all = string.rep('\0', 4 * (nfields + nbins)), {}
  for _, ring in ipairs(rings) do
    for slot = 0, ring[3] - 1 do
      all[#all + 1] = ring[1] .. slot
      all[#all + 1] = empty
    end
  end
  redis.call('HSET', KEYS[1], unpack(all))
end
local kind = ARGV[3]
local a, b, c, d = tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6]), tonumber(ARGV[7])
local now = tonumber(ARGV[8])
for _, ring in ipairs(rings) do
  local width, slots = ring[2], ring[3]
  local start = math.floor(now / width) * width
  local field = ring[1] .. ((start / width) % slots)
  local raw = redis.call('HGET', KEYS[1], field)
  local v
  if raw and #raw == 4 * (nfields + nbins) then v = {struct.unpack(fmt, raw)} end
  if not v or v[1] ~= start then
    v = {start}
    for i = 2, nfields + nbins do v[i] = 0 end
  end
  if kind == 'inv' then
    if v[2] == 0 or c < v[6] then v[6] = c end
    v[2] = v[2] + 1
    v[3] = v[3] + a
    v[4] = v[4] + b
    v[5] = v[5] + c
    if c > v[7] then v[7] = c end
    if d > v[8] then v[8] = d end
    local bin = 0
    if c >= 1 then bin = math.floor(2 * math.log(c) / math.log(2)) end
    if bin > nbins - 1 then bin = nbins - 1 end
    v[nfields + 1 + bin] = v[nfields + 1 + bin] + 1
  else
    if a > v[9] then v[9] = a end
    if b > v[10] then v[10] = b end
    if c > v[11] then v[11] = c end
    v[12] = v[12] + d
  end
  for i = 2, nfields + nbins do if v[i] > 4294967295 then v[i] = 4294967295 end end  -- saturate, never fail
  redis.call('HSET', KEYS[1], field, struct.pack(fmt, unpack(v, 1, nfields + nbins)))
end
redis.call('EXPIRE', KEYS[1], ARGV[9])
return out
