-- claim_release: delete a key only if it still holds the value given (the HTTP source's idempotency
-- keys, sources.http.intake: a claim given up, or a foreign value replaced).
-- KEYS[1] key: the idempotency key
-- ARGV[1] value: what it must hold to be deleted
-- Returns: 1 when deleted, else 0.
if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end
return 0
