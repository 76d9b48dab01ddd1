-- incrby: INCRBY as a script, queued among a pipeline's commands (tests/test_redis_internals.py).
-- KEYS[1] counter: the key to add to
-- ARGV[1] by: what to add
-- Returns: the new value.
return redis.call('INCRBY', KEYS[1], ARGV[1])
