"""Bringing back the work of workers that died mid-invocation (SIGKILL, OOM killer, a crash).

RQ leaves such a job in its started registry until a maintenance pass, every 10 minutes, fails it
as abandoned. lambdalite's scaler calls :func:`recover` as soon as it reaps a dead worker (and at
start for workers of an earlier run), and the event runs again as its next attempt, or is
dead-lettered once its retries are spent, like any other failure. A job a worker took but died
(or was killed) before starting goes back to the front of its queue.

Entries these read may be damaged: each one that cannot be used is logged with its key and left
out (or moved aside), and the rest are handled as usual.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from typing import cast

import redis
from rq.queue import Queue

from broker import connection, quarantine, rqlayout
from broker.envelope import Event
from broker.errors import EnvelopeError
from broker.handler_api import idempotency
from broker.queues import Publisher, function_queue, queue_name, taking_key
from broker.registry import Function, Registry
from broker.transaction import transaction
from workers import jobs
from workers.outcomes import Outcomes
from workers.sandbox import error_object

log = logging.getLogger(__name__)

def _put_back_taken(client: redis.Redis, queue: Queue, is_dead: Callable[[str], bool]) -> int:
    """Jobs a dead worker took from ``queue`` (BLMOVE into its taking list) but was killed before
    starting go back to the front of the queue, not counted as an attempt: nothing ran. The dead
    worker's RQ registration goes too (RQ leaves it until its own maintenance pass)."""
    put_back = 0
    registered = rqlayout.workers_of_queue_key(queue.name)
    try:
        members = cast("set[bytes]", client.smembers(registered))
    except redis.ResponseError as e:
        if quarantine.wrong_type(e) and quarantine.repair(client, {registered: "set"}):
            return 0
        raise
    for key in members:  # RQ worker keys
        name = rqlayout.worker_name_of(key)
        if not is_dead(name):
            continue
        taking = taking_key(name)
        try:
            while (job_id := cast("bytes | None", client.lindex(taking, -1))) is not None:
                client.lmove(taking, queue.key, "RIGHT", "LEFT")
                log.warning("worker %s died holding %s before starting it; back on %s", name,
                            job_id.decode(errors="replace"), queue.name)
                put_back += 1
        except redis.ResponseError as e:
            if not (quarantine.wrong_type(e) and quarantine.repair(client, {taking: "list", queue.key: "list"})):
                raise
        with client.pipeline() as pipe:
            pipe.srem(registered, key)
            pipe.srem(rqlayout.WORKERS_KEY, key)
            pipe.execute()
    return put_back


def recover(client: redis.Redis, registry: Registry, is_dead: Callable[[str], bool],
            causes: Mapping[str, tuple[str, str]] | None = None) -> int:
    """Settle every started job whose worker ``is_dead(worker_name)``, and put back what dead
    workers had taken but not started; returns how many jobs that concerned.

    ``causes``: for a worker the scaler killed because it could not enforce a limit itself (see
    :mod:`workers.watchdog`), the error type and message its event is settled with."""
    publisher = Publisher(client, registry)
    functions = list(registry)
    # Whether each function has a registered worker or a started job, for all of them in one round
    # trip (EXISTS reads a key of any type): a function with neither, every function of an idle
    # stack, has nothing to recover and costs nothing more.
    found = connection.run(client, [("EXISTS", rqlayout.workers_of_queue_key(queue_name(fn.name)),
                                     rqlayout.started_key(queue_name(fn.name))) for fn in functions])
    recovered = 0
    for fn, count in zip(functions, found, strict=True):
        if count == 0:
            continue
        queue = function_queue(client, fn.name)
        recovered += _put_back_taken(client, queue, is_dead)
        started = queue.started_job_registry
        try:
            entries = cast("list[tuple[bytes, float]]", client.zrange(started.key, 0, -1, withscores=True))
        except redis.ResponseError as e:
            if quarantine.wrong_type(e) and quarantine.repair(client, {started.key: "zset"}):
                continue
            raise
        for member, expires in entries:
            job_id = jobs.job_id(member.split(b":")[0])
            if job_id is None or member.count(b":") != 1:
                log.warning("redis key %s: entry %r is not a job execution; removed", started.key, member[:80])
                client.zrem(started.key, member)
                continue
            recovered += _recover_one(client, publisher, fn, started.key, member, job_id, expires, is_dead,
                                      causes or {})
    return recovered


def _recover_one(client: redis.Redis, publisher: Publisher, fn: Function, registry_key: str, member: bytes,
                 job_id: str, expires: float, is_dead: Callable[[str], bool],
                 causes: Mapping[str, tuple[str, str]]) -> int:
    try:
        job = jobs.read(client, job_id)
    except jobs.UnreadableJob as e:
        return _recover_unreadable(client, publisher, fn, registry_key, member, e, expires, is_dead)
    worker = job.worker_name
    if not _gone(worker, expires, is_dead):
        return 0
    if worker:  # its sandbox died with it: the idempotency keys it claimed are free for the next attempt
        idempotency.release_held(client, worker)
    started = job.started_job_registry
    with client.pipeline() as pipe:
        started.remove_executions(job, pipeline=pipe)
        pipe.zrem(registry_key, member)
        job.delete(pipeline=pipe, remove_from_queue=True)
        pipe.execute()
    try:
        event = Event.from_dict(job.args[0])
    except (EnvelopeError, IndexError, TypeError) as e:
        log.warning("%s: job %s of dead worker %s holds no event (%s); nothing to run again", fn.name, job_id,
                    worker, e)
        return 0
    error_type, detail = causes.get(worker or "", ("Runtime.ExitError", f"the worker {worker} died"))
    error = error_object(error_type, f"RequestId: {event.id} Error: {detail}")
    Outcomes(client, publisher, fn).settle_failure(event, error, f"worker {worker} died during {event.id}"
                                                   + (f" ({error_type})" if worker in causes else ""))
    return 1


def _recover_unreadable(client: redis.Redis, publisher: Publisher, fn: Function, registry_key: str,
                        member: bytes, unreadable: jobs.UnreadableJob, expires: float,
                        is_dead: Callable[[str], bool]) -> int:
    """A started job whose hash went missing (dropped at once) or became unreadable (settled once its
    worker is gone)."""
    if unreadable.missing:
        if client.zrem(registry_key, member):  # else its worker just finished it: nothing was wrong
            log.warning("%s: started job %s: %s; entry removed from %s", fn.name, unreadable.key,
                        unreadable.problem, registry_key)
        return 0
    worker = jobs.worker_of(client, unreadable.key)
    if not _gone(worker, expires, is_dead):
        return 0
    event = jobs.salvage(client, unreadable.key)
    with transaction(client) as pipe:
        pipe.zrem(registry_key, member)
        quarantine.set_aside(pipe, unreadable.key, "is not a job RQ can read")
        if event is not None and event.function == fn.name:
            error = error_object("Runtime.ExitError", f"RequestId: {event.id} Error: the worker {worker} died")
            line = Outcomes(client, publisher, fn).failure(pipe, event, error, 0.0)
        else:
            line = "nothing in it to run again"
        replies = pipe.execute(report=False)
    moved = quarantine.report(replies[1:2], quiet=True)  # told in the line below
    quarantine.report(replies[2:])
    log.warning("%s: started job %s %s; %s%s", fn.name, unreadable.key, unreadable.problem, line or "retried",
                f"; the hash was {moved[0][2]}" if moved else "")
    return 1 if event is not None else 0


def _gone(worker: str | None, expires: float, is_dead: Callable[[str], bool]) -> bool:
    """Whether the worker of a started job is gone; without a worker name, whether RQ's own lease on
    the entry (its score: when its heartbeat runs out) has expired."""
    if worker:
        return is_dead(worker)
    return expires < time.time()
