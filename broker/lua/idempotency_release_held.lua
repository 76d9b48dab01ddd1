-- idempotency_release_held: delete every claim in a worker's held set that is still that worker's
-- (token "<worker>/..."), then the set (broker.handler_api.idempotency: its invocation was killed, or it died).
-- Keys derived inside the script from the set's members: the records it names (deleted).
-- KEYS[1] held: the worker's held set, lambdalite:idempotency-held:<worker>
-- ARGV[1] token_prefix: "<worker>/", how the worker's tokens start
-- Returns: how many claims were deleted.
local released = 0
for _, key in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  local raw = redis.call('GET', key)
  if raw then
    local ok, rec = pcall(cjson.decode, raw)
    if ok and type(rec) == 'table' and rec.status == 'INPROGRESS' and type(rec.token) == 'string'
        and string.sub(rec.token, 1, #ARGV[1]) == ARGV[1] then
      redis.call('DEL', key)
      released = released + 1
    end
  end
end
redis.call('DEL', KEYS[1])
return released
