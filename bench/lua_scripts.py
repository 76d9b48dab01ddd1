"""How a script queued in a transaction is best sent: ``python bench/lua_scripts.py [--write]``.

In a scratch redis-server (the embedded one's binary), the three scripts a worker queues in the
transaction that records an invocation's end (its cost, its log lines, its history), ``--count``
transactions in a row on one client, each way side by side in each round:

- EVAL with the script's text, what :meth:`broker.scripts.Lua.queue` sends;
- redis-py's ``Script`` on the pipeline: EVALSHA, and before every execute a SCRIPT EXISTS of its own;
- bare EVALSHA of scripts loaded beforehand: the floor, which a NOSCRIPT after a restart of Redis
  would break (inside MULTI/EXEC the transaction's other writes apply without the script's).

Figures are this process's CPU time and the wall time per transaction (the wall time follows the
machine's load), the commands Redis counted and the round trips each makes, the median of the rounds.
``--write`` puts the table in docs/architecture.md.
"""

from __future__ import annotations

import sys as _sys
from pathlib import Path as _Path

_sys.path[:] = [p for p in _sys.path if _Path(p or ".").resolve() != _Path(__file__).resolve().parent]

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import redis
from redis.commands.core import Script

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.append(str(ROOT / "bench"))  # last: bench/http.py must not hide the standard library's http

from report import table, write_section  # noqa: E402

from broker import cost, history, logstore  # noqa: E402
from broker.redis_internals import queued  # noqa: E402
from broker.redis_server.embedded import RedisServer  # noqa: E402

COMMAND = "python bench/lua_scripts.py --write"
LINES = [(1_765_000_000_000 + i, f"line {i} of what the handler printed") for i in range(5)]


def outcome(pipe: Any, i: int) -> None:
    """The worker's three script writes for one invocation of function ``f`` (as Lua.queue sends them)."""
    cost.record(pipe, "f", 128, 3, None)
    logstore.record(pipe, "f", f"request-{i}", LINES, cap=1000)
    history.record(pipe, "f", time.time(), 2.5, False, False, 4.0)


def _evals(client: redis.Redis, i: int) -> list[tuple[Any, ...]]:
    with client.pipeline(transaction=False) as pipe:
        outcome(pipe, i)
        return list(queued(pipe))


def ways(client: redis.Redis) -> dict[str, Callable[[int], None]]:
    """Each way sends the same recorded commands, so only the sending differs."""
    scripts: dict[str, Script] = {}

    def script(text: str) -> Script:
        return scripts.get(text) or scripts.setdefault(text, Script(client, text))

    def ours(i: int) -> None:
        with client.pipeline() as pipe:
            for command in _evals(client, i):
                pipe.execute_command(*command)  # EVAL text numkeys keys... args..., as Lua.queue queues it
            pipe.execute()

    def redis_py(i: int) -> None:
        with client.pipeline() as pipe:
            for _, text, n, *rest in _evals(client, i):
                script(text)(keys=rest[:int(n)], args=rest[int(n):], client=pipe)
            pipe.execute()

    def bare(i: int) -> None:
        with client.pipeline() as pipe:
            for _, text, n, *rest in _evals(client, i):
                pipe.execute_command("EVALSHA", script(text).sha, n, *rest)
            pipe.execute()

    for _, text, *_ in _evals(client, 0):
        client.script_load(text)
    return {"EVAL with the text (Lua.queue)": ours, "redis-py Script on the pipeline": redis_py,
            "EVALSHA of loaded scripts": bare}


def measure(client: redis.Redis, way: Callable[[int], None], count: int) -> tuple[float, float, float]:
    """This process's CPU µs and the wall µs per transaction, and the commands Redis counted per
    transaction (the scripts' own calls included; SCRIPT EXISTS is the one more of redis-py's Script)."""
    before = client.info("stats")["total_commands_processed"]
    cpu, begun = time.process_time(), time.perf_counter()
    for i in range(count):
        way(i)
    cpu, wall = (time.process_time() - cpu) / count * 1e6, (time.perf_counter() - begun) / count * 1e6
    commands = (client.info("stats")["total_commands_processed"] - before - 1) / count
    return cpu, wall, commands


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=2000, help="transactions per way and round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--write", action="store_true", help="write the table into docs/architecture.md")
    args = parser.parse_args()
    runs: dict[str, list[tuple[float, float, float]]] = {}
    with RedisServer(Path(tempfile.mkdtemp(prefix="ll-bench-lua-"))) as server:
        client = redis.Redis.from_url(server.url)
        for round_ in range(args.rounds):
            for name, way in ways(client).items():
                client.flushall()
                figure = measure(client, way, args.count)
                runs.setdefault(name, []).append(figure)
                print(f"round {round_ + 1}: {name:34s} {figure[0]:7.1f} µs CPU {figure[1]:7.1f} µs wall "
                      f"{figure[2]:5.1f} commands", flush=True)
        client.close()
    trips = {"EVAL with the text (Lua.queue)": "1",
             "redis-py Script on the pipeline": "2: SCRIPT EXISTS, then the rest",
             "EVALSHA of loaded scripts": "1, but NOSCRIPT after a restart"}
    reference = statistics.median(c for c, _, _ in runs["EVAL with the text (Lua.queue)"])
    rows = []
    for name, got in runs.items():
        cpu, wall, commands = (statistics.median(f[i] for f in got) for i in range(3))
        rows.append([name, f"{cpu:.0f} µs", f"{cpu / reference:.2f}×", f"{wall:.0f} µs", f"{commands:.0f}",
                     trips[name]])
    text = (f"The worker's three script writes of an invocation's end (cost, logs, history) in one "
            f"MULTI/EXEC, {args.count} in a row on one client, median of {args.rounds} rounds, each way side "
            "by side:\n\n"
            + table(["sent as", "client CPU / transaction", "CPU against EVAL", "wall / transaction",
                     "commands Redis counted", "round trips"], rows))
    print("\n" + text)
    if args.write:
        print(f"written to {write_section('architecture.md', 'lua-scripts', text, COMMAND)}")


if __name__ == "__main__":
    main()
