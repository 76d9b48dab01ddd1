-- misconf: the error reply Redis gives a write it cannot persist (a full disk), as a script's reply
-- (tests/test_redis_internals.py: how each client parses it).
-- Returns: the error MISCONF Errors writing to the AOF file: No space left on device.
return redis.error_reply('MISCONF Errors writing to the AOF file: No space left on device')
