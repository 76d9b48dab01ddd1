"""Bringing back the work of workers that died mid-invocation (SIGKILL, OOM killer, a crash).

RQ leaves such a job in its started registry until a maintenance pass, every 10 minutes, fails it
as abandoned. lambdalite's scaler calls :func:`recover` as soon as it reaps a dead worker (and at
start for workers of an earlier run), and the event runs again as its next attempt, or is
dead-lettered once its retries are spent, like any other failure.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import redis
from rq.exceptions import NoSuchJobError
from rq.job import Job
from rq.queue import Queue
from rq.serializers import JSONSerializer
from rq.worker_registration import REDIS_WORKER_KEYS, WORKERS_BY_QUEUE_KEY

from broker import idempotency
from broker.envelope import Event
from broker.errors import EnvelopeError
from broker.queues import Publisher, function_queue, taking_key
from broker.registry import Registry
from workers.outcomes import Outcomes
from workers.sandbox import error_object

log = logging.getLogger(__name__)


def _put_back_taken(client: redis.Redis, queue: Queue, is_dead: Callable[[str], bool]) -> int:
    """Jobs a dead worker took from ``queue`` (BLMOVE into its taking list) but was killed before
    starting go back to the front of the queue, not counted as an attempt: nothing ran. The dead
    worker's RQ registration goes too (RQ leaves it until its own maintenance pass)."""
    put_back = 0
    registered = WORKERS_BY_QUEUE_KEY % queue.name
    for key in client.smembers(registered):  # members are RQ worker keys, rq:worker:<name>
        name = key.decode().removeprefix("rq:worker:")
        if not is_dead(name):
            continue
        taking = taking_key(name)
        while (job_id := client.lindex(taking, -1)) is not None:
            client.lmove(taking, queue.key, "RIGHT", "LEFT")
            log.warning("worker %s died holding %s before starting it; back on %s", name, job_id.decode(),
                        queue.name)
            put_back += 1
        with client.pipeline() as pipe:
            pipe.srem(registered, key)
            pipe.srem(REDIS_WORKER_KEYS, key)
            pipe.execute()
    return put_back


def recover(client: redis.Redis, registry: Registry, is_dead: Callable[[str], bool]) -> int:
    """Settle every started job whose worker ``is_dead(worker_name)``, and put back what dead
    workers had taken but not started; returns how many jobs that concerned."""
    publisher = Publisher(client, registry)
    recovered = 0
    for fn in registry:
        queue = function_queue(client, fn.name)
        recovered += _put_back_taken(client, queue, is_dead)
        started = queue.started_job_registry
        for job_id, _execution in started.get_job_and_execution_ids(cleanup=False):
            try:
                job = Job.fetch(job_id, connection=client, serializer=JSONSerializer)
            except NoSuchJobError:
                client.zrem(started.key, *[k for k in client.zrange(started.key, 0, -1)
                                           if k.decode().startswith(job_id + ":")])
                continue
            if not job.worker_name or not is_dead(job.worker_name):
                continue
            # Its sandbox died with it: the idempotency keys it claimed are free for the next attempt.
            idempotency.release_held(client, job.worker_name)
            with client.pipeline() as pipe:
                started.remove_executions(job, pipeline=pipe)
                job.delete(pipeline=pipe, remove_from_queue=True)
                pipe.execute()
            try:
                event = Event.from_dict(job.args[0])
            except (EnvelopeError, IndexError, TypeError):
                continue  # not an event: nothing to run again
            error = error_object("Runtime.ExitError",
                                 f"RequestId: {event.id} Error: the worker {job.worker_name} died")
            Outcomes(client, publisher, fn).settle_failure(
                event, error, f"worker {job.worker_name} died during {event.id}")
            recovered += 1
    return recovered
