-- idempotency_claim: claim an idempotency record for an invocation (broker.handler_api.idempotency), unless one is
-- there; a claim made in a lambdalite sandbox is noted in its worker's held set, so the worker can
-- release it when the invocation is killed.
-- KEYS[1] record: the record, lambdalite:idempotency:<function>:<hash of the key>
-- KEYS[2..] held: the worker's held set (lambdalite:idempotency-held:<worker>); none outside a sandbox
-- ARGV[1] claim: the INPROGRESS record (JSON, with its token)
-- ARGV[2] ttl_ms: milliseconds the claim (and the held set) lives: the invocation's remaining time
-- Returns: nil when claimed, else the record that is there.
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
  if KEYS[2] then
    redis.call('SADD', KEYS[2], KEYS[1])
    redis.call('PEXPIRE', KEYS[2], ARGV[2])
  end
  return false
end
return redis.call('GET', KEYS[1])
