-- job_take: start a function's next job as rq 3.0's worker starts one (workers.taking).
-- For the job id given, or else the one at the tail of the worker's taking list: if RQ accepts it
-- as a job id and its hash holds a job, moves aside the keys of the wrong type and writes RQ's
-- start of the job (the execution and its two registries, the worker's state and heartbeat, the
-- job's status, with times from Redis's clock) and drops the id from the taking list, atomically.
-- Keys derived inside the script from the job id (read from the taking list, data the caller has
-- not read): the job hash rq:job:<id>, its execution registry, its results stream (only guarded)
-- and the execution's hash (and the asides of those of another type, aside_of).
-- include: move, utc
-- KEYS[1] worker: the worker's hash
-- KEYS[2] worker_executions: the worker's set of executions
-- KEYS[3] taking: the worker's taking list, where BLMOVE put the id
-- KEYS[4] started: the queue's started registry (a sorted set)
-- KEYS[5] worker_aside: where a worker key of another type is moved (quarantine.aside)
-- KEYS[6] worker_executions_aside: where a worker_executions key of another type is moved
-- KEYS[7] taking_aside: where a taking key of another type is moved
-- KEYS[8] started_aside: where a started key of another type is moved
-- ARGV[1] quarantine_keep: seconds a moved-aside value is kept
-- ARGV[2] quarantine_mark: the first word of a reply that tells of a move (quarantine.report)
-- ARGV[3] quarantine_prefix: the prefix of a derived key's aside (quarantine.derive_args)
-- ARGV[4] quarantine_stamp: the stamp of a derived key's aside
-- ARGV[5] job_id: the job to start; '' for the one at the tail of the taking list
-- ARGV[6] execution_id: the new execution's id
-- ARGV[7] worker_name: the worker's name
-- ARGV[8] ttl: the heartbeat's lifetime (seconds)
-- ARGV[9] job_prefix: the prefix of a job's hash
-- ARGV[10] executions_prefix: the prefix of a job's execution registry
-- ARGV[11] results_prefix: the prefix of a job's results stream
-- ARGV[12] execution_prefix: the prefix of an execution's hash (+ job id:execution id)
-- ARGV[13] started_status: a started job's status (broker.rqlayout.START)
-- ARGV[14] busy_state: a busy worker's state
-- ARGV[15] grace: seconds the job's and the worker's executions outlive the heartbeat
-- Returns: {1, id, the job hash as it was (HGETALL), seconds, microseconds, what the guard moved};
-- {0, id} when it declined an id; {0} when there was none.
local worker_key, worker_execs, taking, started = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local id, exec_id, worker, ttl = ARGV[5], ARGV[6], ARGV[7], tonumber(ARGV[8])
local grace = tonumber(ARGV[15])
if id == '' then id = redis.call('LINDEX', taking, -1) end
if not id then return {0} end
if not string.match(id, '^[A-Za-z0-9_-]+$') then return {0, id} end
local job = ARGV[9] .. id
if redis.call('TYPE', job).ok ~= 'hash' or redis.call('HEXISTS', job, 'data') == 0 then return {0, id} end
local fields = redis.call('HGETALL', job)
local execs = ARGV[10] .. id
local moved = {}
local move = mover(ARGV[1], ARGV[2], moved)
move(worker_key, KEYS[5], 'hash')
move(worker_execs, KEYS[6], 'set')
move(taking, KEYS[7], 'list')
move(started, KEYS[8], 'zset')
move(execs, aside_of(ARGV[3], ARGV[4], execs), 'zset')
local results = ARGV[11] .. id
move(results, aside_of(ARGV[3], ARGV[4], results), 'stream')
local now = redis.call('TIME')
local sec, usec = tonumber(now[1]), tonumber(now[2])
local stamp, iso = string.format('%d.%06d', sec, usec), utc(sec, usec)
local composite = id .. ':' .. exec_id
local exec_key = ARGV[12] .. composite
redis.call('HSET', exec_key, 'id', exec_id, 'job_id', id, 'created_at', stamp, 'last_heartbeat', stamp,
           'worker_name', worker)
redis.call('EXPIRE', exec_key, ttl)
redis.call('ZADD', execs, sec + ttl + grace, exec_id)
redis.call('EXPIRE', execs, ttl + grace)
redis.call('ZADD', started, sec + ttl, composite)
redis.call('SADD', worker_execs, composite)
redis.call('EXPIRE', worker_execs, ttl + grace)
redis.call('HSET', worker_key, 'state', ARGV[14])
redis.call('HSET', worker_key, 'last_heartbeat', iso)
redis.call('EXPIRE', worker_key, ttl)
redis.call('EXPIRE', worker_execs, ttl)
redis.call('HSET', job, 'last_heartbeat', iso, 'status', ARGV[13], 'started_at', iso, 'worker_name', worker)
redis.call('PERSIST', job)
redis.call('LREM', taking, 1, id)
return {1, id, fields, sec, usec, moved}
