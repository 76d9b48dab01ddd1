"""What writing RQ's layout ourselves buys over RQ's own code paths: ``python bench/rq_paths.py [--write]``.

In a scratch redis-server (the embedded one's binary), ``--count`` jobs a round, each way side by
side in each round, one client in this process:

- a job's start: RQ's own (``Queue.dequeue_any``, then its worker's ``prepare_execution`` and
  ``prepare_job_execution``) beside lambdalite's (``workers.taking.Taker.wait``: the BLMOVE and the
  take script in one round trip, then the job decoded and :func:`broker.rqlayout.mirror_start`);
- a job's end (a success kept for a synchronous caller): RQ's ``handle_job_success`` and its
  ``set_state('idle')`` beside :func:`broker.rqlayout.record_success` with the execution's end and
  the worker's counters on one transaction (a worker adds lambdalite's outcome to that same one);
- a small job's data (the envelope of a ``{"n": 1}`` event): compressed as RQ does, beside stored as is.

Figures: client CPU and wall time per job (medians of the rounds) and Redis commands per job
(``INFO stats``: a script's own calls count, the script itself too). ``--write`` puts the table in
docs/architecture.md.
"""

from __future__ import annotations

import sys as _sys
from pathlib import Path as _Path

_sys.path[:] = [p for p in _sys.path if _Path(p or ".").resolve() != _Path(__file__).resolve().parent]

import argparse
import json
import statistics
import sys
import tempfile
import time
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import redis
from redis.connection import AbstractConnection
from rq import SimpleWorker
from rq.executions import Execution
from rq.job import Job
from rq.queue import Queue
from rq.serializers import JSONSerializer
from rq.utils import now

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.append(str(ROOT / "bench"))  # last: bench/http.py must not hide the standard library's http

from report import table, write_section  # noqa: E402

from broker import rqlayout  # noqa: E402
from broker.connection import connect  # noqa: E402
from broker.envelope import Event  # noqa: E402
from broker.queues import RUNNER, Publisher, function_queue, rq_timeout, taking_key  # noqa: E402
from broker.redis_server.embedded import RedisServer  # noqa: E402
from broker.registry import Function, Registry  # noqa: E402
from workers import jobs  # noqa: E402
from workers.taking import Taker  # noqa: E402

COMMAND = "python bench/rq_paths.py --write"
WORKER = "bench-host|0.bench.1"


SENT = [0]  # writes to Redis of this process, each one round trip (every client of this process counted)
_send = AbstractConnection.send_packed_command


def _counted(self: AbstractConnection, command: Any, check_health: bool = True) -> None:
    SENT[0] += 1
    _send(self, command, check_health)


AbstractConnection.send_packed_command = _counted  # type: ignore[method-assign]  # the bench's own meter


def commands(client: redis.Redis) -> int:
    return int(client.info("stats")["total_commands_processed"])


def timed(client: redis.Redis, count: int, one: Callable[[int], None]) -> tuple[float, float, float, float]:
    """Client CPU and wall µs per call of ``one``, Redis commands and round trips per call."""
    before, sent = commands(client), SENT[0]
    cpu, wall = time.process_time(), time.perf_counter()
    for i in range(count):
        one(i)
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    trips = SENT[0] - sent
    return cpu / count * 1e6, wall / count * 1e6, (commands(client) - before - 1) / count, trips / count


def setup(client: redis.Redis, count: int, name: str) -> tuple[Publisher, Queue, SimpleWorker, Taker]:
    fn = Function(name="bench", handler="bench.handler")
    registry = Registry({"bench": fn}, ROOT / "lambdalite.toml")
    publisher = Publisher(client, registry)
    publisher.publish_many([Event("bench", {"n": 1}, invocation_type="RequestResponse") for _ in range(count)])
    queue = function_queue(client, "bench")
    worker = SimpleWorker([queue], connection=client, name=name, serializer=JSONSerializer)
    worker.register_birth()
    probe = Job("ttl", connection=client, serializer=JSONSerializer)
    probe.timeout = rq_timeout(fn)
    taker = Taker(client, queue, name, worker.key, worker.executions_key, taking_key(name),
                  worker.get_heartbeat_ttl(probe))
    return publisher, queue, worker, taker


def one_round(url: str, count: int) -> dict[str, tuple[float, float, float, float]]:
    client = connect(url)
    client.flushall()
    out: dict[str, tuple[float, float, float, float]] = {}
    try:
        # -- starts ------------------------------------------------------------------------------
        _, queue, rq_worker, _ = setup(client, count, "bench-rq")
        client.delete(queue.key)  # RQ's own jobs instead, whose function RQ can run: json.loads('{"n": 1}')
        for _ in range(count):
            queue.enqueue_call("json.loads", args=('{"n": 1}',), timeout=33, result_ttl=600)
        theirs: list[Any] = []

        def rq_start(i: int) -> None:
            job, _ = Queue.dequeue_any([queue], None, connection=client, serializer=JSONSerializer)  # type: ignore[misc]
            execution = rq_worker.prepare_execution(job)
            rq_worker.prepare_job_execution(job)
            theirs.append((job, execution))

        out["start: RQ's dequeue_any, prepare_execution, prepare_job_execution"] = timed(client, count, rq_start)
        _, queue, worker, taker = setup(client, count, WORKER)
        ours: list[Any] = []

        def our_start(i: int) -> None:
            raw, started = taker.wait(1)
            if started is None and raw is not None:  # the script not loaded yet: the worker's careful path
                started = taker.start(raw.decode())
            assert started is not None
            execution = Execution(started.execution_id, started.job_id, client, worker_name=WORKER)
            execution.created_at = execution.last_heartbeat = started.at
            job = jobs.decode(client, started.job_id, rqlayout.started_fields(started.fields))
            rqlayout.mirror_start(worker, job, started.at)
            ours.append((job, execution))

        out["start: lambdalite's Taker.wait (BLMOVE + take script)"] = timed(client, count, our_start)

        # -- ends (on the jobs each way started) -------------------------------------------------
        started_key = rqlayout.started_key(queue.name)
        for job, _ in theirs:  # run, untimed: the result RQ's handle_job_success records
            job.perform()

        def rq_end(i: int) -> None:
            job, execution = theirs[i]
            job.ended_at = now()
            rq_worker.handle_job_success(job, queue, queue.started_job_registry, execution)
            rq_worker.set_state("idle")

        def our_end(i: int) -> None:
            job, execution = ours[i]
            ended = now()
            with client.pipeline(transaction=True) as pipe:
                worker.increment_successful_job_count(pipeline=pipe)
                rqlayout.record_success(pipe, job, {"n": 1}, 600, WORKER, execution, ended)
                worker.increment_total_working_time(ended - job.started_at, pipe)
                rqlayout.end_execution(pipe, job.id, execution, started_key)
                worker.set_state("idle", pipeline=pipe)
                pipe.execute()

        out["end: RQ's handle_job_success, set_state"] = timed(client, count, rq_end)
        out["end: lambdalite's record_success etc., one transaction"] = timed(client, count, our_end)

        # -- a small job's data -------------------------------------------------------------------
        data = json.dumps((RUNNER, None, (Event("bench", {"n": 1}).to_dict(),), {})).encode()
        size = f"{round(len(data), -1)} bytes"  # about: an event id's and a time's lengths vary
        out[f"a job's data, {size}: zlib level 1, as RQ"] = timed(client, count, lambda i: zlib.compress(data, 1))
        out[f"a job's data, {size}: as is"] = timed(client, count, lambda i: bytes(data))
    finally:
        client.close()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=2000, help="jobs per way and round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--write", action="store_true", help="write the table into docs/architecture.md")
    args = parser.parse_args()
    runs: dict[str, list[tuple[float, float, float, float]]] = {}
    with tempfile.TemporaryDirectory(prefix="ll-bench-rq-") as folder, RedisServer(Path(folder)) as server:
        for round_ in range(args.rounds):
            for name, figure in one_round(server.url, args.count).items():
                runs.setdefault(name, []).append(figure)
                print(f"round {round_ + 1}: {name:70s} {figure[0]:7.1f} µs CPU {figure[1]:7.1f} µs wall "
                      f"{figure[2]:5.1f} commands {figure[3]:4.1f} round trips", flush=True)
    rows = []
    for name, got in runs.items():
        cpu, wall, cmds, trips = (statistics.median(f[k] for f in got) for k in range(4))
        rows.append([name, f"{cpu:.1f} µs", f"{wall:.1f} µs", f"{cmds:.0f}", f"{trips:.0f}"])
    text = (f"RQ's own code path beside lambdalite's, {args.count} jobs a way in each of {args.rounds} rounds "
            "(medians), one client on the embedded redis-server; commands as Redis counts them (a script's own "
            "calls included), round trips as this process writes them. lambdalite's end also holds its own "
            "outcome in that one transaction (not measured here); RQ's would need another:\n\n"
            + table(["path", "client CPU / job", "wall / job", "Redis commands / job", "round trips / job"], rows))
    print("\n" + text)
    if args.write:
        path = write_section("architecture.md", "rq-paths", text, COMMAND)
        print(f"written to {path}")


if __name__ == "__main__":
    main()
