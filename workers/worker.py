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
import socket
import time
from collections.abc import Callable
from typing import Any

import redis
from rq import SimpleWorker
from rq.exceptions import NoSuchJobError
from rq.executions import Execution
from rq.job import Job, JobStatus
from rq.queue import Queue
from rq.results import Result
from rq.serializers import JSONSerializer
from rq.utils import now
from rq.worker import WorkerStatus

from broker import idempotency
from broker.connection import TRANSIENT, Backoff
from broker.envelope import Event
from broker.errors import EnvelopeError
from broker.queues import RUNNER, Publisher, function_queue, taking_key
from broker.registry import Function, Registry
from workers.outcomes import Outcomes
from workers.runtime import Runtime

log = logging.getLogger(__name__)

DEQUEUE_TIMEOUT = 1  # seconds a blocking dequeue waits before the loop looks at its flags again
HEARTBEAT_EVERY = 5.0  # seconds between an idle worker's heartbeats (a job's start sends one too)


class Refused(Exception):
    """A job this worker must not run (foreign function, malformed or misrouted envelope)."""


class FunctionWorker(SimpleWorker):
    """An RQ worker bound to one function's queue, running jobs in that function's sandbox."""

    def __init__(self, fn: Function, registry: Registry, client: redis.Redis, runtime: Runtime,
                 name: str) -> None:
        # prepare_for_work=False skips RQ's CLIENT SETNAME / CLIENT INFO round trips at start;
        # the facts they would record are set here.
        super().__init__([function_queue(client, fn.name)], connection=client, name=name,
                         serializer=JSONSerializer, prepare_for_work=False)
        self.hostname, self.pid, self.ip_address = socket.gethostname(), os.getpid(), "local"
        self.fn = fn
        self.registry = registry
        self.runtime = runtime
        self.taking = taking_key(name)
        self.publisher = Publisher(client, registry)
        self.outcomes = Outcomes(client, self.publisher, fn)
        self.stop_requested = False
        self.abandon_requested = False
        self._last_beat = 0.0
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
        self.runtime.prepare()  # the sandbox forks and sets up while the worker registers
        self.register_birth()
        self._last_beat = time.monotonic()  # the birth set the key's lifetime
        backoff = Backoff(log, f"worker {self.name} retrying")
        try:
            while not self.stop_requested and os.getppid() == self.parent:
                try:
                    self.step()
                    backoff.succeeded()
                except TRANSIENT as e:
                    time.sleep(backoff.failed(e))
        finally:
            self.runtime.close()
            with contextlib.suppress(TRANSIENT):
                self.register_death()

    def serialize(self) -> dict[str, Any]:
        # Born idle: the scaler retires a worker that never got a job like any other idle one.
        return {**super().serialize(), "state": WorkerStatus.IDLE.value}

    def step(self) -> bool:
        """Take one job if one arrives within DEQUEUE_TIMEOUT and run it; returns whether one ran."""
        if time.monotonic() - self._last_beat >= HEARTBEAT_EVERY:
            self.heartbeat()
            self._last_beat = time.monotonic()
        queue = self.queues[0]
        taken = self.connection.blmove(queue.key, self.taking, DEQUEUE_TIMEOUT)
        if taken is None:
            return False
        job_id = taken.decode()
        try:
            job = Job.fetch(job_id, connection=self.connection, serializer=self.serializer)
        except NoSuchJobError:
            log.warning("worker %s: job %s on %s has no job hash; dropped", self.name, job_id, queue.name)
            self.connection.lrem(self.taking, 1, job_id)
            return False
        self.execute_job(job, queue)
        return True

    # -- one job --------------------------------------------------------------------------------
    # RQ's own bookkeeping (its registries, executions, results, worker counters) in two round
    # trips a job, one before and one after the invocation, instead of RQ's dozen or so.

    def execute_job(self, job: Job, queue: Queue) -> None:
        with self.connection.pipeline() as pipe:
            ttl = self.get_heartbeat_ttl(job)
            execution = Execution.create(job, ttl, pipeline=pipe, worker_name=self.name)
            self.executions[execution.id] = execution
            self.set_state(WorkerStatus.BUSY, pipeline=pipe)
            self.heartbeat(ttl, pipeline=pipe)
            job.prepare_for_execution(self.name, pipeline=pipe)
            pipe.persist(job.key)
            pipe.lrem(self.taking, 1, job.id)
            pipe.execute()
        self.perform_job(job, queue, execution)

    def perform_job(self, job: Job, queue: Queue, execution: Any) -> bool:
        try:
            event = self.accept(job)
        except Refused as e:
            log.error("worker %s: refused job %s: %s", self.name, job.id, e)
            self.finish(job, execution, None, f"Refused: {e}", lambda pipe: "")
            return False
        if event.invocation_type == "Event" and event.age > self.fn.maximum_event_age:
            limit = self.fn.maximum_event_age
            error = {"errorType": "EventAgeExceeded",
                     "errorMessage": f"event is {event.age:.0f} s old (maximum_event_age {limit:g})"}
            self.finish(job, execution, None, json.dumps(error), lambda pipe: self.outcomes.failure(
                pipe, event, error, 0.0, condition="EventAgeExceeded", dead=True))
            return False
        inv = self.runtime.invoke(event.id, event.payload, abandon=lambda: self.abandon_requested)
        if inv.status not in ("success", "error"):
            self.release_claims(event)  # the sandbox was killed mid-handler: its claims die with it
        if inv.status == "abandoned":
            self.requeue(job, queue, event, execution)
            return False
        if inv.ok:
            self.finish(job, execution, inv.result, None, lambda pipe: self.outcomes.success(
                pipe, event, inv.result, inv.duration_ms))
            return True
        self.finish(job, execution, None, json.dumps(inv.error), lambda pipe: self.outcomes.failure(
            pipe, event, inv.error, inv.duration_ms))
        return False

    def finish(self, job: Job, execution: Any, result: Any, failure: str | None,
               settle: Callable[[Any], str]) -> None:
        """Record the end of a job in RQ's terms and lambdalite's, in one transaction."""
        job.ended_at = now()
        worked = job.ended_at - (job.started_at or job.ended_at)
        with self.connection.pipeline(transaction=True) as pipe:
            if failure is None:
                job._result = result
                self.increment_successful_job_count(pipeline=pipe)
                result_ttl = job.get_result_ttl(self.default_result_ttl)
                if result_ttl == 0:
                    # What Job.delete() removes, without the reads it makes first (nothing else
                    # refers to a finished asynchronous job: it is in no registry any more).
                    pipe.delete(job.key, job.dependents_key, job.dependencies_key, Result.get_key(job.id),
                                job.execution_registry.key)
                else:
                    job._handle_success(result_ttl, pipeline=pipe, worker_name=self.name,
                                        execution_id=execution.id, execution_started_at=execution.created_at,
                                        execution_ended_at=job.ended_at)
                    job.cleanup(result_ttl, pipeline=pipe, remove_from_queue=False)
                job._status = JobStatus.FINISHED
            else:
                job.set_status(JobStatus.FAILED, pipeline=pipe)
                job._handle_failure(failure, pipeline=pipe, worker_name=self.name, execution_id=execution.id,
                                    execution_started_at=execution.created_at, execution_ended_at=job.ended_at)
                self.increment_failed_job_count(pipeline=pipe)
            self.increment_total_working_time(worked, pipe)
            self.cleanup_execution(job, pipeline=pipe, execution=execution)
            self.set_state(WorkerStatus.IDLE, pipeline=pipe)
            line = settle(pipe)
            pipe.execute()
        if line:
            log.info("%s", line)

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

    def release_claims(self, event: Event) -> None:
        """Free the idempotency keys the killed sandbox claimed, so the next attempt need not wait
        for them to expire (they do expire, if Redis cannot be reached now)."""
        try:
            released = idempotency.release_held(self.connection, self.name)
        except TRANSIENT as e:
            log.warning("worker %s: could not release the idempotency claims of %s: %s", self.name, event.id, e)
            return
        if released:
            log.info("worker %s: released %d idempotency claim(s) of %s", self.name, released, event.id)

    def requeue(self, job: Job, queue: Queue, event: Event, execution: Any) -> None:
        """Put an abandoned event back at the front of its queue; not counted as an attempt."""
        with self.connection.pipeline() as pipe:
            self.cleanup_execution(job, pipeline=pipe, execution=execution)
            pipe.delete(job.key)
            pipe.execute()
        self.publisher.publish(event, at_front=True)
        log.info("worker %s: stopped during %s; event put back on the queue", self.name, event.id)
