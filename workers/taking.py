"""Taking a function's next job and starting it, in the round trip that waits for it.

BLMOVE moves the next job id from the function's queue to the worker's own taking list, so that a
worker killed before the start leaves the id where recovery hands it back (see workers.recovery).
Queued right behind it on the same connection, the take script runs the moment BLMOVE returns: for
the id at the tail of the taking list, if RQ accepts it as a job id and its hash holds a job, it
moves aside the keys of the wrong type (see broker.quarantine) and writes RQ's start of the job --
what rq 3.0's worker writes when it starts one: the execution and its two registries, the worker's
state and heartbeat, the job's status, with times from Redis's clock -- and drops the id from the
taking list, atomically, handing back the job hash as it was before the start. A job waited for is
so read and started in one wake-up of the worker, where reading and then starting it would add two
round trips between the event and its handler.

Anything the script declines (an id RQ refuses, no hash, a key of another type, no job data in it)
stays in the taking list for the worker's careful path, which can run the script for an id it names.
"""

from __future__ import annotations

import datetime
import uuid
from dataclasses import dataclass
from typing import Any

import redis
from redis.backoff import NoBackoff
from redis.exceptions import NoScriptError
from redis.retry import Retry
from rq.queue import Queue

from broker import connection, quarantine, rqlayout

#: ``utc(sec, usec)``: RQ's timestamp format (``%Y-%m-%dT%H:%M:%S.%fZ``) of a Unix time, in Lua,
#: which has no calendar (the days-to-date conversion is Howard Hinnant's ``civil_from_days``).
UTC_LUA = """
local function utc(sec, usec)
  local days = math.floor(sec / 86400)
  local rest = sec - days * 86400
  local z = days + 719468
  local era = math.floor(z / 146097)
  local doe = z - era * 146097
  local yoe = math.floor((doe - math.floor(doe / 1460) + math.floor(doe / 36524) - math.floor(doe / 146096)) / 365)
  local doy = doe - (365 * yoe + math.floor(yoe / 4) - math.floor(yoe / 100))
  local mp = math.floor((5 * doy + 2) / 153)
  local day = doy - math.floor((153 * mp + 2) / 5) + 1
  local month = mp < 10 and mp + 3 or mp - 9
  local year = yoe + era * 400 + (month <= 2 and 1 or 0)
  return string.format('%04d-%02d-%02dT%02d:%02d:%02d.%06dZ', year, month, day, math.floor(rest / 3600),
                       math.floor(rest % 3600 / 60), rest % 60, usec)
end
"""

# KEYS: the keys of the worker and its queue that the start writes, ARGV[i] the type of KEYS[i];
# then quarantine.script_args() (4 values); then, from a = #KEYS + 4: the taking list, the job id ('' for the
# tail of the taking list), the execution id, the worker name, the heartbeat's lifetime (seconds),
# the worker's key, its executions set, the started registry, and the prefixes of the job key, the
# job's execution registry, its results stream and an execution's key.
# Returns {1, id, the job hash (HGETALL), seconds, microseconds, what the guard moved}, or {0[, id]}.
_TAKE = quarantine.MOVE_FUNCTION + UTC_LUA + """
local n = #KEYS
local a = n + 4
local taking, id, exec_id, worker, ttl = ARGV[a + 1], ARGV[a + 2], ARGV[a + 3], ARGV[a + 4], tonumber(ARGV[a + 5])
local worker_key, worker_execs, started = ARGV[a + 6], ARGV[a + 7], ARGV[a + 8]
if id == '' then id = redis.call('LINDEX', taking, -1) end
if not id then return {0} end
if not string.match(id, '^[A-Za-z0-9_-]+$') then return {0, id} end
local job = ARGV[a + 9] .. id
if redis.call('TYPE', job).ok ~= 'hash' or redis.call('HEXISTS', job, 'data') == 0 then return {0, id} end
local fields = redis.call('HGETALL', job)
local execs = ARGV[a + 10] .. id
local moved = {}
for i, key in ipairs(KEYS) do move(key, ARGV[i], n, moved) end
move(execs, 'zset', n, moved)
move(ARGV[a + 11] .. id, 'stream', n, moved)
local now = redis.call('TIME')
local sec, usec = tonumber(now[1]), tonumber(now[2])
local stamp, iso = string.format('%d.%06d', sec, usec), utc(sec, usec)
local composite = id .. ':' .. exec_id
local exec_key = ARGV[a + 12] .. composite
redis.call('HSET', exec_key, 'id', exec_id, 'job_id', id, 'created_at', stamp, 'last_heartbeat', stamp,
           'worker_name', worker)
redis.call('EXPIRE', exec_key, ttl)
redis.call('ZADD', execs, sec + ttl + 60, exec_id)
redis.call('EXPIRE', execs, ttl + 60)
redis.call('ZADD', started, sec + ttl, composite)
redis.call('SADD', worker_execs, composite)
redis.call('EXPIRE', worker_execs, ttl + 60)
redis.call('HSET', worker_key, 'state', 'busy')
redis.call('HSET', worker_key, 'last_heartbeat', iso)
redis.call('EXPIRE', worker_key, ttl)
redis.call('EXPIRE', worker_execs, ttl)
redis.call('HSET', job, 'last_heartbeat', iso, 'status', 'started', 'started_at', iso, 'worker_name', worker)
redis.call('PERSIST', job)
redis.call('LREM', taking, 1, id)
return {1, id, fields, sec, usec, moved}
"""


@dataclass(frozen=True, slots=True)
class Started:
    """A job the take script started: its id, its hash as it was before, its execution, and when."""

    job_id: str
    fields: list[bytes]
    execution_id: str
    at: datetime.datetime


class Taker:
    """One worker's taking of jobs from its function's queue."""

    def __init__(self, client: redis.Redis, queue: Queue, worker_name: str, worker_key: str,
                 executions_key: str, taking: str, ttl: int) -> None:
        self.client = client
        self.queue = queue
        self.worker_name = worker_name
        self.taking = taking
        self.ttl = ttl
        self.started_key = started = rqlayout.started_key(queue.name)
        # The keys the take script writes, and their types (see broker.quarantine).
        self.expected = {worker_key: "hash", executions_key: "set", taking: "list", started: "zset"}
        # RQ's keys, as its own classes name them: the worker's, then the prefixes of a job's.
        self._keys = [worker_key, executions_key, started, rqlayout.JOB_PREFIX, rqlayout.EXECUTIONS_PREFIX,
                      rqlayout.RESULTS_PREFIX, rqlayout.EXECUTION_PREFIX]
        self.script = client.register_script(_TAKE)
        self.blocked: int | None = None  # the client id of the connection a wait blocks, while it does
        self.interrupted = False  # a stop came: every wait ends as soon as it begins
        self._unblocking = False
        self._unblocker: redis.Redis | None = None

    def _args(self, job_id: str, execution_id: str) -> list[Any]:
        return [*self.expected.values(), *quarantine.script_args(), self.taking, job_id, execution_id, self.worker_name,
                self.ttl, *self._keys]

    def wait(self, timeout: int) -> tuple[bytes | None, Started | None]:
        """Wait up to ``timeout`` seconds for the next job id (BLMOVE to the taking list) and start its job
        in the same round trip; returns the id taken (None if none came) and what was started (None if
        the script declined, or did not run). The script may also start a job an earlier step left
        in the taking list: what it started is the job to run. :meth:`interrupt` ends the wait
        early. Raises redis errors of BLMOVE."""
        execution_id = uuid.uuid4().hex

        def note(i: int, reply: Any) -> None:  # the id of the connection BLMOVE blocks, while it may
            self.blocked = reply if i == 0 and isinstance(reply, int) else None
            if self.blocked is not None and self.interrupted:
                self._unblock()  # interrupted before it began

        try:
            _, raw, reply = connection.run(self.client, [
                ("CLIENT", "ID"),
                ("BLMOVE", self.queue.key, self.taking, "LEFT", "RIGHT", timeout),
                ("EVALSHA", self.script.sha, len(self.expected), *self.expected, *self._args("", execution_id)),
            ], on_reply=note)
        finally:
            self.blocked = None
        if isinstance(raw, Exception):
            raise raw
        if isinstance(reply, NoScriptError):
            self.client.script_load(_TAKE)  # a restarted Redis: the careful path starts this one
            return raw, None
        if isinstance(reply, Exception):
            return raw, None  # the careful path runs it again and meets the error there
        return raw, self._started(reply, execution_id)

    def interrupt(self) -> None:
        """End the :meth:`wait` in progress now, and any later one as soon as it begins, as if it
        timed out (CLIENT UNBLOCK from a connection of its own): for a stop signal's handler, so a
        stop need not wait out the timeout. If Redis cannot be told, the wait times out by itself."""
        self.interrupted = True
        self._unblock()

    def _unblock(self) -> None:
        target = self.blocked
        if target is None or self._unblocking:
            return
        self._unblocking = True
        try:
            if self._unblocker is None:
                pool = self.client.connection_pool
                options = {**pool.connection_kwargs, "socket_timeout": 0.5, "socket_connect_timeout": 0.5,
                           "retry": Retry(NoBackoff(), 0)}
                self._unblocker = redis.Redis(connection_pool=redis.ConnectionPool(
                    connection_class=pool.connection_class, **options))
            self._unblocker.client_unblock(target)
        except redis.RedisError:
            pass
        finally:
            self._unblocking = False

    def start(self, job_id: str) -> Started | None:
        """Start the job ``job_id`` now, if its hash holds a job (one round trip); None when the script
        declined (nothing written). Raises redis errors."""
        execution_id = uuid.uuid4().hex
        reply = self.script(keys=list(self.expected), args=self._args(job_id, execution_id), client=self.client)
        return self._started(reply, execution_id)

    def _started(self, reply: list[Any], execution_id: str) -> Started | None:
        if reply[0] != 1:
            return None
        _, job_id, fields, sec, usec, moved = reply
        quarantine.report([moved])
        at = datetime.datetime.fromtimestamp(int(sec), datetime.UTC).replace(microsecond=int(usec))
        return Started(job_id.decode(), fields, execution_id, at)
