"""What lambdalite's Redis client layer buys over redis-py alone: ``python bench/redis_client.py [--write]``.

In a scratch redis-server (the embedded one's binary), one publish's transaction (the job's hash, the
queue push, the queue set and the wake-up, in MULTI/EXEC), ``--count`` times in a row on one client,
each way side by side in each round:

- blocking: redis-py's transaction pipeline (``execute()``) beside :func:`broker.connection.transact`
  of the same recorded commands (hiredis packs them; the replies skip redis-py's callbacks);
- asyncio: redis-py's ``redis.asyncio`` transaction pipeline beside
  :class:`sources.http.transactor.Transactor` (what the HTTP source stores its batches with).

Figures are the client process's CPU time and the wall time per transaction, the median of the rounds.
Then, through :class:`broker.queues.Publisher` (a guarded transaction), the round trips (writes on a
connection) and the Redis commands (``INFO commandstats``) per published event.
``--write`` puts the table in docs/architecture.md.
"""

from __future__ import annotations

import sys as _sys
from pathlib import Path as _Path

_sys.path[:] = [p for p in _sys.path if _Path(p or ".").resolve() != _Path(__file__).resolve().parent]

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import redis
import redis.asyncio

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.append(str(ROOT / "bench"))  # last: bench/http.py must not hide the standard library's http

from report import table, write_section  # noqa: E402

from broker.connection import connect, transact  # noqa: E402
from broker.redis_internals import queued  # noqa: E402
from broker.redis_server.embedded import RedisServer  # noqa: E402
from sources.http.transactor import Transactor  # noqa: E402

COMMAND = "python bench/redis_client.py --write"


def publish(pipe: Any, i: int) -> None:
    """One event's publish, as broker.queues writes it (a job hash of about 300 bytes)."""
    pipe.hset(f"rq:job:{i}", mapping={"created_at": "2026-12-06T22:00:00.000000Z", "status": "queued",
                                      "data": "x" * 240, "origin": "bench", "timeout": 3})
    pipe.rpush("rq:queue:bench", i)
    pipe.sadd("rq:queues", "rq:queue:bench")
    pipe.publish("lambdalite:wake", "bench")


def timed(count: int, one: Callable[[int], None]) -> tuple[float, float]:
    one(-1)  # a connection opened, scripts and callbacks warm
    cpu, wall = time.process_time(), time.perf_counter()
    for i in range(count):
        one(i)
    return (time.process_time() - cpu) / count * 1e6, (time.perf_counter() - wall) / count * 1e6


async def timed_async(count: int, one: Callable[[int], Awaitable[Any]]) -> tuple[float, float]:
    await one(-1)
    cpu, wall = time.process_time(), time.perf_counter()
    for i in range(count):
        await one(i)
    return (time.process_time() - cpu) / count * 1e6, (time.perf_counter() - wall) / count * 1e6


def blocking(url: str, count: int) -> dict[str, tuple[float, float]]:
    # redis-py's own client, whose pipelines are not guarded transactions (connect()'s are): the same
    # commands each way
    plain, client = redis.Redis.from_url(url, driver_info=None), connect(url)

    def redis_py(i: int) -> None:
        with plain.pipeline(transaction=True) as pipe:
            publish(pipe, i)
            pipe.execute()

    def ours(i: int) -> None:
        with plain.pipeline(transaction=True) as pipe:
            publish(pipe, i)
            transact(client, queued(pipe))

    try:
        return {"redis-py pipeline": timed(count, redis_py), "broker.connection.transact": timed(count, ours)}
    finally:
        plain.close()
        client.close()


def asynchronous(url: str, count: int) -> dict[str, tuple[float, float]]:
    recorder = redis.Redis.from_url(url)  # records the commands only

    async def go() -> dict[str, tuple[float, float]]:
        client = redis.asyncio.Redis.from_url(url)
        transactor = Transactor(url)

        async def redis_py(i: int) -> None:
            async with client.pipeline(transaction=True) as pipe:
                publish(pipe, i)
                await pipe.execute()

        async def ours(i: int) -> None:
            with recorder.pipeline(transaction=True) as pipe:
                publish(pipe, i)
                commands = queued(pipe)
            await transactor.execute(commands)

        try:
            return {"redis.asyncio pipeline": await timed_async(count, redis_py),
                    "sources.http.transactor.Transactor": await timed_async(count, ours)}
        finally:
            await client.aclose()
            await transactor.close()

    try:
        return asyncio.run(go())
    finally:
        recorder.close()


def per_event(url: str, folder: Path, count: int) -> tuple[float, float, dict[str, int]]:
    """Round trips and Redis commands per event of ``count`` single publishes, and the commands' names."""
    from redis.connection import AbstractConnection

    from broker.envelope import Event
    from broker.queues import Publisher
    from broker.registry import load_registry

    (folder / "lambdalite.toml").write_text('[functions.f]\nhandler = "handlers.echo.handler"\n')
    client, admin = connect(url), redis.Redis.from_url(url)
    publisher = Publisher(client, load_registry(folder / "lambdalite.toml"))
    publisher.publish(Event("f", {"n": -1}))  # a connection opened
    sent = 0
    send = AbstractConnection.send_packed_command

    def counted(self: Any, *args: Any, **kwargs: Any) -> Any:
        nonlocal sent
        sent += 1
        return send(self, *args, **kwargs)

    admin.config_resetstat()
    AbstractConnection.send_packed_command = counted  # type: ignore[method-assign]
    try:
        for i in range(count):
            publisher.publish(Event("f", {"n": i}))
    finally:
        AbstractConnection.send_packed_command = send  # type: ignore[method-assign]
    calls = {name.removeprefix("cmdstat_"): int(v["calls"]) for name, v in admin.info("commandstats").items()
             if name not in ("cmdstat_config", "cmdstat_info")}
    client.close()
    admin.close()
    return sent / count, sum(calls.values()) / count, calls


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=3000, help="transactions per way and round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--write", action="store_true", help="write the table into docs/architecture.md")
    args = parser.parse_args()
    runs: dict[str, list[tuple[float, float]]] = {}
    with RedisServer(Path(tempfile.mkdtemp(prefix="ll-bench-client-"))) as server:
        flush = redis.Redis.from_url(server.url)
        for round_ in range(args.rounds):
            for measure in (blocking, asynchronous):
                flush.flushall()
                for name, figure in measure(server.url, args.count).items():
                    runs.setdefault(name, []).append(figure)
                    print(f"round {round_ + 1}: {name:30s} {figure[0]:6.1f} µs CPU {figure[1]:6.1f} µs wall",
                          flush=True)
        flush.flushall()
        trips, commands, calls = per_event(server.url, Path(tempfile.mkdtemp(prefix="ll-bench-client-")), args.count)
        flush.close()
    medians = {name: (statistics.median(c for c, _ in got), statistics.median(w for _, w in got))
               for name, got in runs.items()}
    rows = []
    for theirs, ours in (("redis-py pipeline", "broker.connection.transact"),
                         ("redis.asyncio pipeline", "sources.http.transactor.Transactor")):
        for name in (theirs, ours):
            cpu, wall = medians[name]
            share = f"{cpu / medians[theirs][0]:.2f}×" if name == ours else "1"
            rows.append([f"`{name}`", f"{cpu:.0f} µs", share, f"{wall:.0f} µs"])
    text = (f"One publish's transaction (4 commands in MULTI/EXEC), {args.count} in a row on one client, "
            f"median of {args.rounds} rounds, each way side by side:\n\n"
            + table(["client", "client CPU / transaction", "CPU against redis-py", "wall / transaction"], rows))
    text += (f"\n\nA publish through the guarded transaction ({args.count} events one by one): "
             f"{trips:.2f} round trip and {commands:.2f} Redis commands an event "
             f"({', '.join(f'{name} {n / args.count:g}' for name, n in sorted(calls.items()))}).")
    print("\n" + text)
    if args.write:
        print(f"written to {write_section('architecture.md', 'redis-client', text, COMMAND)}")


if __name__ == "__main__":
    main()
