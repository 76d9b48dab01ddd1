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

from broker import connection, quarantine, rqlayout, scripts

_TAKE = scripts.load("job_take")  # broker/lua/job_take.lua


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
        self._named = {"worker": worker_key, "worker_executions": executions_key, "taking": taking, "started": started}
        # RQ's keys, as its own classes name them: the worker's, then the prefixes of a job's.
        self._prefixes = {"job_prefix": rqlayout.JOB_PREFIX, "executions_prefix": rqlayout.EXECUTIONS_PREFIX,
                          "results_prefix": rqlayout.RESULTS_PREFIX, "execution_prefix": rqlayout.EXECUTION_PREFIX,
                          **rqlayout.START}
        self.blocked: int | None = None  # the client id of the connection a wait blocks, while it does
        self.interrupted = False  # a stop came: every wait ends as soon as it begins
        self._unblocking = False
        self._unblocker: redis.Redis | None = None

    def _call(self, job_id: str, execution_id: str) -> tuple[dict[str, str], dict[str, Any]]:
        """The take script's KEYS and ARGV, by name."""
        at = quarantine.stamp()
        keys = {**self._named, **{f"{name}_aside": quarantine.aside(key, at) for name, key in self._named.items()}}
        return keys, {**quarantine.move_args(), **quarantine.derive_args(at), "job_id": job_id,
                      "execution_id": execution_id, "worker_name": self.worker_name, "ttl": self.ttl, **self._prefixes}

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
                _TAKE.command(*self._call("", execution_id)),
            ], on_reply=note)
        finally:
            self.blocked = None
        if isinstance(raw, Exception):
            raise raw
        if isinstance(reply, NoScriptError):
            _TAKE.load(self.client)  # a restarted Redis: the careful path starts this one
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
        keys, args = self._call(job_id, execution_id)
        reply = _TAKE(self.client, keys=keys, args=args)
        return self._started(reply, execution_id)

    def _started(self, reply: list[Any], execution_id: str) -> Started | None:
        if reply[0] != 1:
            return None
        _, job_id, fields, sec, usec, moved = reply
        quarantine.report([moved])
        at = datetime.datetime.fromtimestamp(int(sec), datetime.UTC).replace(microsecond=int(usec))
        return Started(job_id.decode(), fields, execution_id, at)
