-- sadd_x: SADD of the member 'x' as a script, a write its caller declares (tests/test_transaction.py).
-- KEYS[1] set: the set to add to
-- Returns: SADD's reply (1 when added).
return redis.call('SADD', KEYS[1], 'x')
