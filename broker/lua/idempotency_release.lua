-- idempotency_release: give up a claim (broker.handler_api.idempotency): delete the record if it is still this
-- claim.
-- include: ours
-- KEYS[1] record: the record, lambdalite:idempotency:<function>:<hash of the key>
-- KEYS[2..] held: the worker's held set (lambdalite:idempotency-held:<worker>); none outside a sandbox
-- ARGV[1] token: the claim's token
-- Returns: 1 when deleted, else 0.
if KEYS[2] then redis.call('SREM', KEYS[2], KEYS[1]) end
if ours(redis.call('GET', KEYS[1]), ARGV[1]) then
  redis.call('DEL', KEYS[1])
  return 1
end
return 0
