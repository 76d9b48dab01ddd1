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
from rq.serializers import JSONSerializer

from broker import idempotency
from broker.envelope import Event
from broker.errors import EnvelopeError
from broker.queues import Publisher, function_queue
from broker.registry import Registry
from workers.outcomes import Outcomes
from workers.sandbox import error_object

log = logging.getLogger(__name__)


def recover(client: redis.Redis, registry: Registry, is_dead: Callable[[str], bool]) -> int:
    """Settle every started job whose worker ``is_dead(worker_name)``; returns how many."""
    publisher = Publisher(client, registry)
    recovered = 0
    for fn in registry:
        started = function_queue(client, fn.name).started_job_registry
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
