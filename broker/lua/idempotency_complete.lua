-- idempotency_complete: store the completed record of a claim (broker.handler_api.idempotency), unless another
-- invocation stored a completed one first (kept).
-- include: ours
-- KEYS[1] record: the record, lambdalite:idempotency:<function>:<hash of the key>
-- KEYS[2..] held: the worker's held set (lambdalite:idempotency-held:<worker>); none outside a sandbox
-- ARGV[1] token: the claim's token
-- ARGV[2] completed: the COMPLETED record (JSON)
-- ARGV[3] ttl: seconds the completed record is kept
-- Returns: nil when stored, else the completed record another invocation stored first.
if KEYS[2] then redis.call('SREM', KEYS[2], KEYS[1]) end
local raw = redis.call('GET', KEYS[1])
if raw and not ours(raw, ARGV[1]) then
  local ok, rec = pcall(cjson.decode, raw)
  if ok and type(rec) == 'table' and rec.status == 'COMPLETED' then return raw end
end
redis.call('SET', KEYS[1], ARGV[2], 'EX', ARGV[3])
return false
