"""The RQ worker of one function: takes its queue's jobs and runs them through the runtime.

It refuses, without importing anything, any job whose function is not lambdalite's runner or
whose event names another function: RQ would otherwise import and call whatever a job names.
Outcomes go to RQ's own registries and results, to lambdalite's counters and outcome streams, and
failed asynchronous events are retried with backoff and then dead-lettered, as Lambda does.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import math
import os
import signal
import socket
import time
from collections.abc import Callable
from typing import Any, TypeVar

import redis
from rq import SimpleWorker, worker_registration
from rq.executions import Execution
from rq.job import Job
from rq.queue import Queue
from rq.serializers import JSONSerializer
from rq.utils import now, utcformat
from rq.worker import WorkerStatus

from broker import history, quarantine, rqlayout
from broker.conditional import recorded
from broker.connection import TRANSIENT, Backoff, transact
from broker.envelope import Event
from broker.errors import EnvelopeError
from broker.handler_api import idempotency
from broker.queues import RUNNER, Publisher, function_queue, rq_timeout, taking_key
from broker.registry import Function, Registry
from broker.transaction import transaction as guarded
from workers import capture, jobs
from workers.outcomes import Outcomes
from workers.runtime import Runtime
from workers.sandbox import error_object
from workers.taking import Started, Taker
from workers.watchdog import Slot

log = logging.getLogger(__name__)

HEARTBEAT_EVERY = 5  # seconds between an idle worker's heartbeats (a job's start sends one too)
# An invocation that lasted this long may have outlived its host's lease (the scaler's liveness key,
# renewed every second, 3 s to live: workers.scaler), had the host been cut off from Redis; its end
# is recorded only if the job is still this worker's (see FunctionWorker.finish).
FENCE_AFTER = 1.0
T = TypeVar("T")



class Refused(Exception):
    """A job this worker must not run (foreign function, malformed or misrouted envelope)."""


class FunctionWorker(SimpleWorker):
    """An RQ worker bound to one function's queue, running jobs in that function's sandbox."""

    def __init__(self, fn: Function, registry: Registry, client: redis.Redis, runtime: Runtime,
                 name: str, slot: Slot | None = None) -> None:
        # prepare_for_work=False skips RQ's CLIENT SETNAME / CLIENT INFO round trips at start;
        # the facts they would record are set here.
        super().__init__([function_queue(client, fn.name)], connection=client, name=name,
                         serializer=JSONSerializer, prepare_for_work=False)
        self.hostname, self.pid, self.ip_address = socket.gethostname(), os.getpid(), "local"
        self.fn = fn
        self.registry = registry
        self.runtime = runtime
        runtime.door = functools.partial(idempotency.serve_door, client, fn.name, name)
        self.taking = taking_key(name)
        probe = Job("ttl", connection=client, serializer=JSONSerializer)
        probe.timeout = rq_timeout(fn)  # the heartbeat's lifetime, as RQ sizes it for this function's jobs
        self.taker = Taker(client, self.queues[0], name, self.key, self.executions_key, self.taking,
                           self.get_heartbeat_ttl(probe))
        self.publisher = Publisher(client, registry)
        self.outcomes = Outcomes(client, self.publisher, fn)
        self.stop_requested = False
        self.abandon_requested = False
        self.ran: Any = None  # the invocation whose outcome finish() records (its lines and cost go too)
        self.age_ms = 0.0  # the age of its event when it was taken, for the history (broker.history)
        self._last_beat = 0.0
        self._taken_at = 0.0  # when the current job was taken (time.monotonic())
        self.parent = os.getppid()
        self.slot = slot  # the scaler's marks of the control signals it sent (see workers.watchdog)

    # -- the loop -------------------------------------------------------------------------------

    def install_signals(self) -> None:
        """SIGTERM/SIGINT: finish the current invocation, then stop. SIGUSR1: abandon it (requeue).

        With a watchdog slot, each is obeyed only when the scaler sent it (it marks the slot first)
        or the scaler is gone (the kernel's parent-death signal): a handler that signals its worker
        must not stop it, nor have its event handed back without the attempt counting.
        """
        def obeyed(signum: int) -> bool:
            return self.slot is None or self.slot.ordered(signum) or os.getppid() != self.parent

        def stop(signum: int, frame: Any) -> None:
            if not obeyed(signum):
                return
            self.stop_requested = True
            self.taker.interrupt()  # an idle worker stops now, not when its wait for a job times out

        def abandon(signum: int, frame: Any) -> None:
            if not obeyed(signum):
                return
            self.stop_requested = self.abandon_requested = True
            self.taker.interrupt()

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
                except Exception:  # a bug costs one step, not the worker
                    log.exception("worker %s: step failed; carrying on", self.name)
                    time.sleep(0.1)
        finally:
            self.runtime.close()
            with contextlib.suppress(*TRANSIENT):
                self.register_death()

    def serialize(self) -> dict[str, Any]:
        # Born idle: the scaler retires a worker that never got a job like any other idle one.
        return {**super().serialize(), "state": WorkerStatus.IDLE.value}

    def step(self) -> bool:
        """Take one job if one arrives before the next heartbeat is due and run it; returns whether
        one ran. (A stop signal ends the wait at once: see :meth:`Taker.interrupt`.)"""
        if time.monotonic() - self._last_beat >= HEARTBEAT_EVERY:
            with guarded(self.connection) as pipe:
                self.heartbeat(pipeline=pipe)
                pipe.execute()
            self._last_beat = time.monotonic()
        queue = self.queues[0]
        try:
            raw, started = self.taker.wait(max(1, math.ceil(HEARTBEAT_EVERY - (time.monotonic() - self._last_beat))))
        except redis.ResponseError as e:
            moved = quarantine.wrong_type(e) and quarantine.repair(
                self.connection, {queue.key: "list", self.taking: "list"})
            if not moved:
                raise
            return False
        if raw is None and started is None:
            return False
        self._taken_at = time.monotonic()
        self.runtime.prepare_tmpdir()  # made by the sandbox while this process reads the job
        taken = self.hold(lambda: self.take(queue, raw, started), "starting a job")
        if taken is not None:
            self.perform_job(taken[0], queue, taken[1])
        return True

    def register_birth(self) -> None:
        """RQ's registration in one transaction, its keys checked first (see :mod:`broker.quarantine`).

        RQ's own check for a live worker of the same name is left out: names hold the scaler's
        random id and the pid.
        """
        with guarded(self.connection) as pipe:
            pipe.delete(self.key)
            self.birth_date = self.last_heartbeat = now()
            pipe.hset(self.key, mapping=self.serialize())  # type: ignore[arg-type]  # the stub's key type
            worker_registration.register(self, pipe)
            pipe.expire(self.key, self.worker_ttl + 60)
            pipe.execute()

    def register_death(self) -> None:
        """RQ's deregistration, its keys checked first (see :mod:`broker.quarantine`)."""
        with guarded(self.connection) as pipe:
            worker_registration.unregister(self, pipe)
            pipe.hset(self.key, "death", utcformat(now()))
            pipe.expire(self.key, 60)
            pipe.delete(self.executions_key)
            pipe.execute()

    def hold(self, action: Callable[[], T], what: str) -> T:
        """Run ``action`` (Redis work a job depends on) until Redis takes it.

        An outage or a full disk (Redis refusing writes) is waited out here with the job held,
        rather than leaving it half done. Only a worker told to abandon its work (the scaler is
        stopping or gone) gives up; recovery then hands the job back.
        """
        backoff = Backoff(log, f"worker {self.name} holding the job while {what}, retrying")
        while True:
            try:
                result = action()
            except TRANSIENT as e:
                if self.abandon_requested:
                    raise
                time.sleep(backoff.failed(e))
                continue
            backoff.succeeded()
            return result

    # -- taking a job ---------------------------------------------------------------------------
    # RQ's own bookkeeping (its registries, executions, results, worker counters) in two round
    # trips a job, instead of RQ's dozen or so: the wait that takes the job also starts it (see
    # workers.taking), and one transaction records its end. Each first moves aside any of those
    # keys that holds another type (see broker.quarantine: the take script guards the keys it is
    # given, the end is a broker.transaction.Transaction), so no command in it fails alone.

    def cleanup_execution(self, job: Job, pipeline: Any, execution: Execution | None = None) -> None:
        """RQ's cleanup of a job's execution (see :func:`rqlayout.end_execution`)."""
        if execution is None:
            return
        rqlayout.end_execution(pipeline, job.id, execution, self.taker.started_key)
        self.executions.pop(execution.id, None)

    def take(self, queue: Queue, raw: bytes | None, started: Started | None) -> tuple[Job, Execution] | None:
        """The job just taken from ``queue`` (``raw``: its id as the queue held it), started: by the take
        script as it was taken (``started``), else here; returns it and its execution, or None when
        there is none to run.

        A job that cannot be read (an id RQ refuses, no hash, a key of another type, fields or data
        RQ cannot decode) never stops the worker: it is logged and settled as an invalid job (see
        :meth:`settle_unreadable`), its start undone if it was written.
        """
        if started is None:
            job_id = jobs.job_id(raw or b"")
            if job_id is None:
                log.error("worker %s: redis key %s held %r, not a job id; dropped", self.name, queue.key,
                          (raw or b"")[:80])
                self.connection.lrem(self.taking, 1, raw or b"")  # type: ignore[arg-type]  # bytes are fine
                return None
            started = self.taker.start(job_id)
            if started is None:  # nothing was written
                try:
                    jobs.read(self.connection, job_id)
                except jobs.UnreadableJob as e:
                    self.settle_unreadable(queue, e)
                    return None
                return self.take(queue, raw, None)  # a job hash written in between: take it as it is now
        execution = Execution(started.execution_id, started.job_id, self.connection, worker_name=self.name)
        execution.created_at = execution.last_heartbeat = started.at
        try:
            job = jobs.decode(self.connection, started.job_id, rqlayout.started_fields(started.fields))
        except jobs.UnreadableJob as e:
            self.settle_unreadable(queue, e, execution)
            return None
        rqlayout.mirror_start(self, job, started.at)  # what the script wrote, on the Python side
        self.executions[execution.id] = execution
        return job, execution

    def settle_unreadable(self, queue: Queue, unreadable: jobs.UnreadableJob,
                          started: Execution | None = None) -> None:
        """Settle a job that cannot be read, as an invalid job (see :meth:`Outcomes.invalid_job`): its
        hash moved aside, its event parked as a dead letter when one can be read; a missing one is
        only dropped. ``started``: the execution started for it, undone in the same transaction."""
        job_id = unreadable.key[len(rqlayout.JOB_PREFIX):]
        if unreadable.missing:
            log.error("worker %s: job %s taken from %s: %s; dropped (nothing to run)", self.name, job_id,
                      queue.key, unreadable)
            self.connection.lrem(self.taking, 1, job_id)
            return
        event = jobs.salvage(self.connection, unreadable.key)
        if event is not None and event.function != self.fn.name:
            event = None
        with guarded(self.connection) as pipe:
            quarantine.set_aside(pipe, unreadable.key, "is not a job RQ can read")
            line = self.outcomes.invalid_job(pipe, job_id, event, str(unreadable))
            pipe.lrem(self.taking, 1, job_id)
            if started is not None:
                shell = Job(job_id, connection=self.connection, serializer=JSONSerializer)
                shell.origin = queue.name
                self.cleanup_execution(shell, pipeline=pipe, execution=started)
                self.set_state(WorkerStatus.IDLE, pipeline=pipe)
            replies = pipe.execute(report=False)
        moved = quarantine.report(replies[:1], quiet=True)  # told in the line below
        quarantine.report(replies[1:])
        log.error("worker %s: %s%s", self.name, line, f"; the hash was {moved[0][2]}" if moved else "")

    # -- one job --------------------------------------------------------------------------------

    def perform_job(self, job: Job, queue: Queue, execution: Any) -> bool:
        self.ran = None
        self.age_ms = 0.0
        try:
            event = self.accept(job)
        except Refused as e:
            reason = f"redis key {job.key} is not a lambdalite job ({e})"
            line = ""

            def refuse(pipe: Any) -> str:
                nonlocal line
                line = self.outcomes.invalid_job(pipe, job.id, None, reason)
                return ""

            self.finish(job, execution, None, f"Refused: {e}", refuse)
            log.error("worker %s: refused job %s: %s", self.name, job.id, line)
            return False
        self.age_ms = event.age * 1000  # when taken: Lambda's IteratorAge (a stream) or AsyncEventAge
        if self.stop_requested:  # retired (a reload, a scale-down) as the job arrived: a fresh worker runs it
            self.requeue(job, queue, event, execution)
            return False
        if event.invocation_type == "Event" and event.age > self.fn.maximum_event_age:
            limit = self.fn.maximum_event_age
            error = {"errorType": "EventAgeExceeded",
                     "errorMessage": f"event is {event.age:.0f} s old (maximum_event_age {limit:g})"}
            self.finish(job, execution, None, json.dumps(error), lambda pipe: self.outcomes.failure(
                pipe, event, error, 0.0, condition="EventAgeExceeded", dead=True))
            return False
        try:
            inv = self.runtime.invoke(event.id, event.payload, abandon=lambda: self.abandon_requested,
                                      job_data=job.data)
        except Exception as e:  # a fault of the runtime's own costs this attempt, not the job or the worker
            log.exception("worker %s: the runtime failed during %s", self.name, event.id)
            error = error_object("Runtime.Unknown", f"RequestId: {event.id} Error: {type(e).__name__}: {e}")
            self.finish(job, execution, None, json.dumps(error), lambda pipe: self.outcomes.failure(
                pipe, event, error, 0.0))
            return False
        self.ran = inv
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
        """Record the end of a job in RQ's terms and lambdalite's, in one transaction (held until
        Redis takes it: the outcome is never dropped)."""
        job.ended_at = ended = now()
        worked = ended - (job.started_at or ended)
        fenced = time.monotonic() - self._taken_at >= FENCE_AFTER

        def transaction() -> str:
            if fenced and not self.still_ours(job, execution):
                log.warning("worker %s: job %s was taken over while this host's lease ran out (cut off from "
                            "Redis); its outcome is dropped, its event runs again elsewhere", self.name, job.id)
                return ""
            with recorded(self.connection) as pipe:  # run by transact(): the hot path's one write
                if failure is None:
                    self.increment_successful_job_count(pipeline=pipe)
                    result_ttl = job.get_result_ttl(self.default_result_ttl)
                    if result_ttl == 0:  # an asynchronous event's job: nothing keeps it
                        rqlayout.delete_finished(pipe, job)
                    else:
                        rqlayout.record_success(pipe, job, result, result_ttl, self.name, execution, ended)
                else:
                    rqlayout.record_failure(pipe, job, failure, self.name, execution, ended)
                    self.increment_failed_job_count(pipeline=pipe)
                self.increment_total_working_time(worked, pipe)
                self.cleanup_execution(job, pipeline=pipe, execution=execution)
                self.set_state(WorkerStatus.IDLE, pipeline=pipe)
                self.outcomes.ended = ""
                line = settle(pipe)
                if self.ran is not None:
                    capture.store(pipe, self.fn, self.ran, self.runtime.log)
                history.record(pipe, self.fn.name, time.time(), self.ran.duration_ms if self.ran else 0.0,
                               failure is not None, self.outcomes.ended == "dead", self.age_ms)
                commands = pipe.commands()
            quarantine.report(transact(self.connection, commands))
            return line

        line = self.hold(transaction, f"recording the outcome of job {job.id}")
        if line:
            log.info("%s", line)

    def still_ours(self, job: Job, execution: Any) -> bool:
        """Whether this worker still holds ``job``: its execution is in the started registry, from
        which another host's scaler removes it when it takes the job over (see
        :mod:`workers.recovery`)."""
        member = f"{job.id}:{execution.id}"
        return self.connection.zscore(job.started_job_registry.key, member) is not None

    def accept(self, job: Job) -> Event:
        """The job's event, or :class:`Refused` without importing anything the job names."""
        if job.func_name != RUNNER:
            raise Refused(f"job function {job.func_name!r} is not lambdalite's runner")
        args = job.args
        if not isinstance(args, list | tuple) or len(args) != 1 or job.kwargs:
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

        def transaction() -> None:
            with guarded(self.connection) as pipe:
                self.cleanup_execution(job, pipeline=pipe, execution=execution)
                pipe.delete(job.key)
                self.publisher.publish_many([event], at_front=True, pipeline=pipe)
                pipe.execute()

        self.hold(transaction, f"handing back {event.id}")
        log.info("worker %s: stopped during %s; event put back on the queue", self.name, event.id)
