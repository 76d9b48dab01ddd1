"""The RQ worker of one function: takes its queue's jobs and runs them through the runtime.

It refuses, without importing anything, any job whose function is not lambdalite's runner or
whose event names another function: RQ would otherwise import and call whatever a job names.
Outcomes go to RQ's own registries and results, to lambdalite's counters and outcome streams, and
failed asynchronous events are retried with backoff and then dead-lettered, as Lambda does.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import time
from typing import Any

import redis
from rq import SimpleWorker
from rq.exceptions import DequeueTimeout
from rq.job import Job
from rq.queue import Queue
from rq.serializers import JSONSerializer
from rq.utils import now
from rq.worker import WorkerStatus

from broker.connection import TRANSIENT
from broker.envelope import Event
from broker.errors import EnvelopeError
from broker.queues import RUNNER, Publisher, function_queue
from broker.registry import Function, Registry
from workers.outcomes import Outcomes
from workers.runtime import Runtime

log = logging.getLogger(__name__)

DEQUEUE_TIMEOUT = 1  # seconds a blocking dequeue waits before the loop looks at its flags again


class Refused(Exception):
    """A job this worker must not run (foreign function, malformed or misrouted envelope)."""


class FunctionWorker(SimpleWorker):
    """An RQ worker bound to one function's queue, running jobs in that function's sandbox."""

    def __init__(self, fn: Function, registry: Registry, client: redis.Redis, runtime: Runtime,
                 name: str) -> None:
        super().__init__([function_queue(client, fn.name)], connection=client, name=name,
                         serializer=JSONSerializer)
        self.fn = fn
        self.registry = registry
        self.runtime = runtime
        self.publisher = Publisher(client, registry)
        self.outcomes = Outcomes(client, self.publisher, fn)
        self.stop_requested = False
        self.abandon_requested = False
        self.parent = os.getppid()

    # -- the loop -------------------------------------------------------------------------------

    def install_signals(self) -> None:
        """SIGTERM/SIGINT: finish the current invocation, then stop. SIGUSR1: abandon it (requeue)."""
        def stop(signum: int, frame: Any) -> None:
            self.stop_requested = True

        def abandon(signum: int, frame: Any) -> None:
            self.stop_requested = self.abandon_requested = True

        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)
        signal.signal(signal.SIGUSR1, abandon)

    def serve(self) -> None:
        """Register with RQ and run jobs until asked to stop or the parent scaler is gone."""
        self.install_signals()
        self.register_birth()
        self.set_state(WorkerStatus.STARTED)
        backoff = 0.05
        try:
            while not self.stop_requested and os.getppid() == self.parent:
                try:
                    self.step()
                    backoff = 0.05
                except TRANSIENT as e:
                    log.warning("worker %s: redis unavailable (%s); retrying in %.2fs", self.name, e, backoff)
                    time.sleep(backoff)
                    backoff = min(backoff * 2, 2.0)
        finally:
            self.runtime.close()
            with contextlib.suppress(TRANSIENT):
                self.register_death()

    def step(self) -> bool:
        """Take one job if one arrives within DEQUEUE_TIMEOUT and run it; returns whether one ran."""
        self.set_state(WorkerStatus.IDLE)
        self.heartbeat()
        try:
            found = Queue.dequeue_any(self.queues, DEQUEUE_TIMEOUT, connection=self.connection,
                                      job_class=self.job_class, serializer=self.serializer)
        except DequeueTimeout:
            return False
        if found is None:
            return False
        job, queue = found
        self.execute_job(job, queue)
        return True

    # -- one job --------------------------------------------------------------------------------

    def perform_job(self, job: Job, queue: Queue, execution: Any) -> bool:
        self.prepare_job_execution(job, remove_from_intermediate_queue=True)
        job.started_at = now()
        try:
            event = self.accept(job)
        except Refused as e:
            log.error("worker %s: refused job %s: %s", self.name, job.id, e)
            self.handle_execution_ended(job, queue, job.failure_callback_timeout)
            self.handle_job_failure(job, queue, started_job_registry=queue.started_job_registry,
                                    exc_string=f"Refused: {e}", execution=execution)
            return False
        if event.invocation_type == "Event" and event.age > self.fn.maximum_event_age:
            limit = self.fn.maximum_event_age
            error = {"errorType": "EventAgeExceeded",
                     "errorMessage": f"event is {event.age:.0f} s old (maximum_event_age {limit:g})"}
            self.handle_execution_ended(job, queue, job.failure_callback_timeout)
            self.handle_job_failure(job, queue, started_job_registry=queue.started_job_registry,
                                    exc_string=json.dumps(error), execution=execution)
            self.outcomes.failure(event, error, 0.0, condition="EventAgeExceeded", dead=True)
            return False
        inv = self.runtime.invoke(event.id, event.payload, abandon=lambda: self.abandon_requested)
        if inv.status == "abandoned":
            self.requeue(job, queue, event, execution)
            return False
        self.handle_execution_ended(job, queue, job.success_callback_timeout)
        if inv.ok:
            job._result = inv.result
            self.handle_job_success(job=job, queue=queue, started_job_registry=queue.started_job_registry,
                                    execution=execution)
            self.outcomes.success(event, inv.result, inv.duration_ms)
            return True
        self.handle_job_failure(job, queue, started_job_registry=queue.started_job_registry,
                                exc_string=json.dumps(inv.error), execution=execution)
        self.outcomes.failure(event, inv.error, inv.duration_ms)
        return False

    def accept(self, job: Job) -> Event:
        """The job's event, or :class:`Refused` without importing anything the job names."""
        if job.func_name != RUNNER:
            raise Refused(f"job function {job.func_name!r} is not lambdalite's runner")
        args = job.args
        if len(args) != 1 or job.kwargs:
            raise Refused("a lambdalite job has exactly one argument, the event envelope")
        try:
            event = Event.from_dict(args[0])
        except EnvelopeError as e:
            raise Refused(str(e)) from e
        if event.function != self.fn.name or event.function not in self.registry:
            raise Refused(f"event for {event.function!r} arrived on {self.fn.name!r}'s queue")
        return event

    def requeue(self, job: Job, queue: Queue, event: Event, execution: Any) -> None:
        """Put an abandoned event back at the front of its queue; not counted as an attempt."""
        with self.connection.pipeline() as pipe:
            self.cleanup_execution(job, pipeline=pipe, execution=execution)
            pipe.delete(job.key)
            pipe.execute()
        self.publisher.publish(event, at_front=True)
        log.info("worker %s: stopped during %s; event put back on the queue", self.name, event.id)
