"""RQ's Redis layout, and the RQ internals lambdalite relies on: the one module that knows them.

It mirrors **rq 3.0.0** (pinned exactly in pyproject.toml, checked at each process's start by
:mod:`broker.pins`), and ``tests/test_rq_contract.py`` runs RQ's own code against it on a real
redis-server: a job we publish compared with what ``Queue.enqueue`` writes and read by
``Job.fetch``, a job's end compared key by key with what RQ's own ``SimpleWorker`` leaves for a twin
job, a job RQ enqueues run or refused as any other (``tests/test_taking.py`` compares the start with
RQ's own). A release of RQ that changes any of it fails those tests.

lambdalite writes RQ's keys itself so that RQ's tools (``rq info``, rq-dashboard, ``Job.fetch``)
see its jobs and workers as RQ's, but it does not take RQ's own code paths for a job's publish,
start and end: they cost about 21 Redis commands a job in separate round trips (RQ's
``SimpleWorker``), where lambdalite's publish is one transaction for a batch of events, its start
rides on the round trip that waits for the job (``workers.taking``), and its end is one
transaction with lambdalite's own outcome (``workers.worker``).

**What we rely on**

- The keys named below (:data:`JOB_PREFIX` and the functions after it), each taken from RQ's own
  class attribute or constant where RQ has one, so that no other module spells ``rq:``.
- The job hash a publish writes: RQ's own ``Job.to_dict()`` of a job made by the public
  ``Queue.create_job``, once per function (:func:`job_template`), less the fields RQ writes empty
  (``Job.restore`` reads each with a default). Its ``data`` (:func:`job_data`) below
  :data:`COMPRESS_OVER` bytes is stored uncompressed: RQ compresses it, but
  ``Job.restore`` keeps data that zlib refuses as it is (its fallback for uncompressed data), and
  compressing a few hundred bytes costs about 10 µs of CPU a job for next to no saving.
- What a start writes (:data:`START`, passed to ``broker/lua/job_take.lua`` by ``workers.taking``): RQ's
  ``Execution.create``, ``Worker.set_state('busy')``, ``Worker.heartbeat`` and
  ``Job.prepare_for_execution``, in one script run on the round trip that takes the job (RQ's own
  ``dequeue_any``, ``prepare_execution`` and ``prepare_job_execution``: four round trips to one, and
  about four times the client's CPU, ``bench/rq_paths.py``).
- What an end writes, through RQ's **public** API (:func:`record_success`,
  :func:`record_failure`, :func:`end_execution`, :func:`delete_finished`) on lambdalite's own
  transaction: ``Worker.handle_job_success`` / ``handle_job_failure`` would do it in their own
  pipelines, with a WATCH for dependents lambdalite never has (four round trips to one), and
  lambdalite's outcome in another.

**Private names**: none. Each one lambdalite used went back to RQ's public API, or was dropped:

- ``Worker._state`` and ``Execution._job`` (set after the take script's start, as RQ's own start
  sets them): dropped. Their only readers are RQ's own work loop and signal handlers
  (``_shutdown``, ``check_for_suspension``) and ``get_current_job()``, which lambdalite's worker
  replaces or never calls; the public setter (``set_state``) would write Redis again.
- ``Queue._prepare_for_queue``: ``Queue.create_job`` already sets every field ``to_dict`` writes
  (origin, timeout, status); the enqueue time is set at each publish anyway.
- ``Job._status`` (at a start): the started status goes into the job hash that
  ``Job.restore`` reads (:func:`started_fields`), as RQ would read it back.
- ``Job._result``, ``Job._handle_success``, ``Job._handle_failure``, ``Job._status`` (at an
  end): the same commands through ``Job.set_status``, ``Job.save``, ``Result.create``,
  ``Result.create_failure`` and the registries' ``add``, which are RQ's public API (the same
  commands on the same transaction).

``tests/test_rq_contract.py`` also fails if a module other than this one names a private
attribute of RQ's classes.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import re
import zlib
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from rq.defaults import RQ_KEY_PREFIX
from rq.executions import WORKER_EXECUTIONS_KEY_TEMPLATE, Execution, ExecutionRegistry
from rq.job import Job, JobStatus
from rq.queue import Queue
from rq.registry import CanceledJobRegistry, FailedJobRegistry, FinishedJobRegistry, StartedJobRegistry
from rq.results import Result
from rq.serializers import JSONSerializer
from rq.utils import utcformat
from rq.worker import Worker, WorkerStatus
from rq.worker_registration import REDIS_WORKER_KEYS, WORKERS_BY_QUEUE_KEY

if TYPE_CHECKING:
    from rq.worker import BaseWorker

RQ_VERSION = "3.0.0"  # the release this module mirrors

# -- keys -----------------------------------------------------------------------------------------

JOB_PREFIX: str = Job.redis_job_namespace_prefix  # rq:job:<id>, a hash
QUEUE_PREFIX: str = Queue.redis_queue_namespace_prefix  # rq:queue:<queue>, a list of job ids
QUEUES_KEY: str = Queue.redis_queues_keys  # rq:queues, the set of queue keys RQ knows
WORKER_PREFIX: str = Worker.redis_worker_namespace_prefix  # rq:worker:<name>, a hash
WORKERS_KEY: str = REDIS_WORKER_KEYS  # rq:workers, the set of worker keys
EXECUTION_PREFIX = f"{RQ_KEY_PREFIX}:execution:"  # rq:execution:<job id>:<execution id>, a hash (Execution.key)
RESULTS_PREFIX: str = str(Result.get_key(""))  # type: ignore[no-untyped-call]  # rq:results:<job id>, a stream
EXECUTIONS_PREFIX: str = ExecutionRegistry.key_template.format("")  # rq:executions:<job id>, a zset


def job_key(job_id: str) -> str:
    """The hash of a job (``Job.key``)."""
    return JOB_PREFIX + job_id


def queue_key(queue_name: str) -> str:
    """The list of a queue's job ids (``Queue.key``)."""
    return QUEUE_PREFIX + queue_name


def started_key(queue_name: str) -> str:
    """A queue's started registry, a zset of ``<job id>:<execution id>`` scored by when its lease ends."""
    return str(StartedJobRegistry.key_template.format(queue_name))


def finished_key(queue_name: str) -> str:
    """A queue's finished registry, a zset of job ids scored by when they expire."""
    return str(FinishedJobRegistry.key_template.format(queue_name))


def failed_key(queue_name: str) -> str:
    """A queue's failed registry, a zset of job ids scored by when they expire."""
    return str(FailedJobRegistry.key_template.format(queue_name))


def canceled_key(queue_name: str) -> str:
    """A queue's canceled registry (lambdalite never cancels; it prunes what a user's RQ put there)."""
    return str(CanceledJobRegistry.key_template.format(queue_name))


def executions_key(job_id: str) -> str:
    """A job's registry of executions, a zset of execution ids (``ExecutionRegistry(job_id).key``)."""
    return EXECUTIONS_PREFIX + job_id


def results_key(job_id: str) -> str:
    """A job's stream of results (``Result.get_key``)."""
    return RESULTS_PREFIX + job_id


def worker_key(worker_name: str) -> str:
    """A worker's hash (``Worker.key``)."""
    return WORKER_PREFIX + worker_name


def worker_name_of(key: bytes | str) -> str:
    """The worker name in a worker key (a member of :data:`WORKERS_KEY` or :func:`workers_of_queue_key`)."""
    text = key.decode(errors="replace") if isinstance(key, bytes) else key
    return text.removeprefix(WORKER_PREFIX)


def worker_executions_key(worker_name: str) -> str:
    """A worker's set of its executions (``Worker.executions_key``)."""
    return str(WORKER_EXECUTIONS_KEY_TEMPLATE.format(worker_name))


def workers_of_queue_key(queue_name: str) -> str:
    """The set of the keys of the workers registered on a queue."""
    return WORKERS_BY_QUEUE_KEY % queue_name


# -- a job hash's fields and values ----------------------------------------------------------------

#: The time stamps a publish sets (as ``Queue.enqueue_job`` sets them), in RQ's format (:func:`format_time`).
ENQUEUE_STAMPS = ("created_at", "enqueued_at")
ENQUEUED_AT = "enqueued_at"  # when a queued job was (last) queued: its wait
DATA = "data"  # the job's call: (function, instance, args, kwargs) as RQ's JSONSerializer writes it
DESCRIPTION = "description"
WORKER_NAME = "worker_name"  # the worker running it, set at its start
#: The fields of an RQ worker's hash the scaler reads: its state and job counts.
WORKER_STATE_AND_COUNTS = ("state", "successful_job_count", "failed_job_count")
#: Job data over this many bytes is compressed as RQ compresses it. Below it zlib saves next to
#: nothing and costs about 10 µs (bench/rq_paths.py); RQ's ``Job.restore`` reads data that zlib
#: refuses as it is (JSON's first byte is never a zlib header's).
COMPRESS_OVER = 1024

_TIME = re.compile(rb"(\d{4})-(\d\d)-(\d\d)T(\d\d):(\d\d):(\d\d)\.(\d{6})Z")


def format_time(at: datetime.datetime) -> str:
    """A time as RQ writes it in its hashes (``rq.utils.utcformat``)."""
    return utcformat(at)


def parse_time(raw: bytes) -> datetime.datetime | None:
    """A time stamp as RQ writes it, read as RQ's ``utcparse`` reads it without strptime (a tenth of
    the cost); None for anything else."""
    match = _TIME.fullmatch(raw)
    if match is None:
        return None
    try:
        year, month, day, hour, minute, second, micro = map(int, match.groups())
        return datetime.datetime(year, month, day, hour, minute, second, micro, tzinfo=datetime.UTC)
    except ValueError:  # a 13th month
        return None


def restore(job: Job, fields: list[bytes]) -> None:
    """Restore ``job`` from its hash as HGETALL returns it (a flat list) with RQ's ``Job.restore``,
    its enqueue time stamps parsed by :func:`parse_time` (a stamp in another format is left to RQ,
    which raises for it); raises whatever ``Job.restore`` raises for a hash it cannot read."""
    raw = dict(zip(fields[0::2], fields[1::2], strict=True))
    stamps = {}
    for field in ENQUEUE_STAMPS:
        value = raw.get(field.encode())
        stamp = parse_time(value) if isinstance(value, bytes) else None
        if stamp is not None:
            stamps[field] = stamp
            del raw[field.encode()]
    job.restore(raw)
    job.created_at = stamps.get("created_at", job.created_at)
    job.enqueued_at = stamps.get("enqueued_at", job.enqueued_at)


def enqueue_stamps(stamp: str) -> dict[str, str]:
    """The job hash's fields a publish at ``stamp`` (:func:`format_time`) sets."""
    return dict.fromkeys(ENQUEUE_STAMPS, stamp)


def job_data(func: str, argument_json: bytes) -> bytes:
    """A job's ``data``: RQ's JSONSerializer's ``[func, null, [argument], {}]`` for a call of ``func``
    with one argument, given as its JSON; compressed as RQ does over :data:`COMPRESS_OVER` bytes (at
    zlib's fastest level: RQ reads any, and it costs a third of the default's time)."""
    data = b"[%s,null,[%s],{}]" % (json.dumps(func).encode(), argument_json)
    return zlib.compress(data, 1) if len(data) > COMPRESS_OVER else data


def call_of(data: bytes) -> tuple[Any, Any, Any, Any]:
    """The (function, instance, args, kwargs) in a job's ``data``, compressed or not, as ``Job.restore``
    and RQ's JSONSerializer read it; raises what they raise (zlib's, JSON's, unpacking's errors)."""
    with contextlib.suppress(zlib.error):
        data = zlib.decompress(data)
    func, instance, args, kwargs = JSONSerializer.loads(data)  # type: ignore[no-untyped-call]
    return func, instance, args, kwargs


# -- a publish ------------------------------------------------------------------------------------


def job_template(queue: Queue, func: str, options: Mapping[str, Any]) -> dict[str, Any]:
    """The fields of the hash of a queued job of ``queue`` calling ``func`` with ``options`` (as
    ``Queue.create_job`` takes them), as RQ's ``Job.to_dict()`` writes them, less the fields it
    writes empty and the two time stamps, which the caller sets at each publish with ``data`` and
    ``description``."""
    job = queue.create_job(func, args=({},), **options)
    fields = {k: v for k, v in job.to_dict().items() if v != "" and k not in ENQUEUE_STAMPS}
    fields["status"] = JobStatus.QUEUED.value
    return fields


# -- a start --------------------------------------------------------------------------------------

#: RQ's values in what its worker writes at a start, passed to the take script (broker/lua/job_take.lua,
#: called by workers.taking), which writes the execution's hash (Execution.serialize), the worker's
#: state (set_state) and heartbeat, and the job's start (Job.prepare_for_execution) with them. An
#: execution lasts the heartbeat's lifetime; the job's and the worker's executions ``grace`` seconds more
#: (ExecutionRegistry.add, Execution.create). The fields' names are in the script; tests/test_taking.py
#: compares what it writes with RQ's own start.
START: dict[str, str | int] = {
    "started_status": JobStatus.STARTED.value,
    "busy_state": WorkerStatus.BUSY.value,
    "grace": 60,
}


def started_fields(fields: list[bytes]) -> list[bytes]:
    """A job hash as HGETALL returned it before its start (a flat list), with the start's status in
    place of a status RQ reads (one it cannot read is left, for ``Job.restore`` to refuse as before),
    for ``Job.restore``: the job as RQ reads it back once started."""
    out = list(fields)
    for i in range(0, len(out) - 1, 2):
        if out[i] == b"status":
            if out[i + 1].decode(errors="replace") in _STATUSES:
                out[i + 1] = _STARTED
            return out
    return [*out, b"status", _STARTED]


_STATUSES = frozenset(s.value for s in JobStatus)
_STARTED = JobStatus.STARTED.value.encode()


def mirror_start(worker: BaseWorker, job: Job, at: datetime.datetime) -> None:
    """Set on the Python objects what the take script wrote in Redis for ``job``'s start and what
    lambdalite reads of it later: the job's worker and times, the worker's heartbeat."""
    job.worker_name, job.started_at, job.last_heartbeat = worker.name, at, at
    worker.last_heartbeat = at


# -- an end ---------------------------------------------------------------------------------------


def record_success(pipe: Any, job: Job, result: Any, result_ttl: int, worker_name: str, execution: Execution,
                   ended_at: datetime.datetime) -> None:
    """Queue on ``pipe`` what RQ's ``Worker.handle_job_success`` writes for ``job`` (besides the
    worker's counters and the execution's end): the job finished and saved, its result, and its
    entry in the finished registry for ``result_ttl`` seconds (not 0: see :func:`delete_finished`)."""
    job.set_status(JobStatus.FINISHED, pipeline=pipe)
    job.save(pipeline=pipe, include_meta=False, include_result=False)
    Result.create(job, Result.Type.SUCCESSFUL, return_value=result, ttl=result_ttl, worker_name=worker_name,
                  pipeline=pipe, execution_id=execution.id, execution_started_at=execution.created_at,
                  execution_ended_at=ended_at)
    job.finished_job_registry.add(job, result_ttl, pipe)
    job.cleanup(result_ttl, pipeline=pipe, remove_from_queue=False)


def record_failure(pipe: Any, job: Job, failure: str, worker_name: str, execution: Execution,
                   ended_at: datetime.datetime) -> None:
    """Queue on ``pipe`` what RQ's ``Worker.handle_job_failure`` writes for ``job`` that will not be
    retried by RQ (besides the worker's counters and the execution's end): the job failed, in the
    failed registry with ``failure`` (the exception's text), and its failure result."""
    job.set_status(JobStatus.FAILED, pipeline=pipe)
    job.failed_job_registry.add(job, ttl=job.failure_ttl, exc_string=failure, pipeline=pipe)
    Result.create_failure(job, job.failure_ttl, exc_string=failure, worker_name=worker_name, pipeline=pipe,
                          execution_id=execution.id, execution_started_at=execution.created_at,
                          execution_ended_at=ended_at)


def delete_finished(pipe: Any, job: Job) -> None:
    """Queue on ``pipe`` the deletion of a job that finished with a result lifetime of 0: what
    ``Job.delete()`` removes, without the reads it makes first (such a job is in no registry any more)."""
    pipe.delete(job.key, job.dependents_key, job.dependencies_key, results_key(job.id), executions_key(job.id))


def end_execution(pipe: Any, job_id: str, execution: Execution, started: str) -> None:
    """Queue on ``pipe`` RQ's end of an execution (``Execution.delete``), with the keys named here
    rather than through registry objects: the execution's hash, its entries in the queue's started
    registry ``started``, the job's executions and the worker's."""
    pipe.delete(execution.key)
    pipe.zrem(started, execution.composite_key)
    pipe.zrem(executions_key(job_id), execution.id)
    if execution.worker_name:
        pipe.srem(execution.worker_executions_key, execution.composite_key)
