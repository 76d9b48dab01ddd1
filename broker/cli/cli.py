"""The ``lambdalite`` command: status, invoke and dead-letter management.

Every :class:`LambdaliteError` becomes one line on stderr and exit status 1.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any, cast

import redis

from broker import deadletter, pins, results, revision, rqlayout, schedules
from broker.connection import TRANSIENT, RedisRefusesWrites, connect
from broker.envelope import Event, parse_json
from broker.errors import InvocationError, LambdaliteError, RedisUnavailableError
from broker.queues import Publisher, function_of_queue
from broker.redis_url import redacted
from broker.registry import Registry, load_registry
from broker.settings import Settings, load_settings
from broker.stats import alive_key, status

WAIT_MARGIN = 30.0  # seconds a synchronous invoke waits beyond the function's timeout


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="lambdalite", description="A self-hosted, Lambda-style function runner.")
    sub = p.add_subparsers(dest="command", required=True)
    st = sub.add_parser("status", help="queued, running, workers and outcomes per function")
    st.add_argument("--json", action="store_true", help="print one JSON object")
    st.add_argument("--cost", action="store_true", help="requests, GB-seconds and what they would cost on Lambda")
    inv = sub.add_parser("invoke", help="run one invocation through the queue")
    inv.add_argument("function")
    inv.add_argument("--event", type=Path, help="JSON file with the event (default: {})")
    inv.add_argument("--async", dest="is_async", action="store_true",
                     help="queue it (retried, then dead-lettered on failure) and print its id")
    inv.add_argument("--wait", type=float, default=None, help="seconds to wait for the result")
    dlq = sub.add_parser("dlq", help="dead letters")
    dsub = dlq.add_subparsers(dest="action", required=True)
    dl = dsub.add_parser("list", help="list dead letters")
    dl.add_argument("function", nargs="?")
    dr = dsub.add_parser("replay", help="publish dead letters again and remove them")
    dr.add_argument("function")
    dr.add_argument("ids", nargs="*")
    dp = dsub.add_parser("purge", help="drop all dead letters of a function")
    dp.add_argument("function")
    dk = dsub.add_parser("park", help="dead-letter what is queued for a function the running stack no longer has")
    dk.add_argument("function")
    sub.add_parser("check", help="validate lambdalite.toml and import every handler")
    rl = sub.add_parser("reload", help="validate lambdalite.toml and the handlers; the running stack takes them")
    rl.add_argument("--wait", type=float, default=10.0, help="seconds to wait for the stack to take them")
    lg = sub.add_parser("logs", help="a function's invocation logs (START, its output, END, REPORT)")
    lg.add_argument("function")
    lg.add_argument("--follow", "-f", action="store_true", help="then wait for new invocations (Ctrl-C ends)")
    lg.add_argument("--since", default="10m", help="from this long ago (30s, 10m, 2h, 1d) or an ISO time")
    lg.add_argument("--filter", dest="text", help="only the lines that hold this text")
    lg.add_argument("--request-id", help="only this invocation")
    lg.add_argument("--output", choices=("text", "json"), default="text")
    return p


def main(argv: list[str] | None = None) -> None:
    args = _parser().parse_args(argv)
    _warnings_to_stderr()
    pins.warn()  # a mismatch is said, not fatal: the CLI is what one runs to look at a broken stack
    try:
        settings = load_settings()
        try:
            registry = _registry(args.command, settings)
        except LambdaliteError as e:
            if args.command != "status":
                raise
            code = _status_without_registry(args, settings, e)
        else:
            code = _run(args, settings, registry)
    except LambdaliteError as e:
        print(f"lambdalite: {e}", file=sys.stderr)
        sys.exit(1)
    except TRANSIENT as e:
        print(f"lambdalite: redis unavailable at {redacted(load_settings().redis_dsn)}: {_reason(e)}", file=sys.stderr)
        sys.exit(1)
    except redis.RedisError as e:
        print(f"lambdalite: redis refused the command: {_reason(e)}", file=sys.stderr)
        sys.exit(1)
    sys.exit(code)


def _registry(command: str, settings: Settings) -> Registry:
    """The functions a command works on: the running stack's revision (published in Redis by the
    scaler), so the CLI answers for what runs; the file itself for ``check`` and ``reload``, when no
    scaler runs (the next start reads the file), and when Redis cannot be reached (the command says
    so later)."""
    if command not in ("check", "reload"):
        client = connect(settings.redis_dsn, retries=0)
        try:
            alive = next(client.scan_iter(match=alive_key("*"), count=1000), None) is not None
            running = revision.running(client, settings.config) if alive else None
        except TRANSIENT:
            running = None
        finally:
            client.close()
        if running is not None:
            return running
    return load_registry(settings.config)


def _reason(e: BaseException) -> str:
    """Redis's own words (with the error code redis-py keeps apart), without redis-py's account of
    which pipeline command it was."""
    text = str(e).rpartition(" of pipeline caused error: ")[2]
    code = getattr(e, "status_code", None)
    return f"{code} {text}" if isinstance(code, str) and not text.startswith(code) else text


def _warnings_to_stderr() -> None:
    """What the library logs at WARNING (a corrupt entry skipped, a key of the wrong type) goes to
    stderr as one ``lambdalite: ...`` line each; stdout keeps only the command's output."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("lambdalite: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.WARNING)


def _connected(settings: Settings) -> redis.Redis:
    """A client of the stack's Redis, which answers; raises :class:`RedisUnavailableError`."""
    client = connect(settings.redis_dsn)
    try:
        client.ping()
    except RedisRefusesWrites as e:  # reads still work: status and dlq list can still answer
        logging.getLogger(__name__).warning("redis refuses writes (%s); a command that writes will fail", e)
    except TRANSIENT as e:
        raise RedisUnavailableError(f"redis unavailable at {redacted(settings.redis_dsn)}: {e}") from e
    return client


def _run(args: argparse.Namespace, settings: Settings, registry: Registry) -> int:
    if args.command == "check":
        from broker.environment import check_handlers

        check_handlers(registry, settings)  # as each sandbox will: its environment, the sandbox user
        print(f"{registry.path}: {len(registry.functions)} function(s) OK")
        return 0
    client = _connected(settings)
    if args.command == "reload":
        return _reload(args, client, registry, settings)
    if args.command == "logs":
        from broker.cli import logcli

        return logcli.run(client, registry.get(args.function).name, args.since, args.follow, args.text,
                          args.request_id, args.output)
    if args.command == "status" and args.cost:
        return _cost(args, client, registry)
    if args.command == "status":
        removed = sorted(set(_queued_names(client)) - set(registry.functions))
        snapshot = status(client, [*registry.functions, *removed])
        for name in removed:
            snapshot["functions"][name]["removed"] = True
        _next_ticks(snapshot, registry, settings)
        rev = registry.revision
        if rev is not None:
            snapshot["revision"] = {**rev.describe(), "refused": revision.refused(client) or None}
            if snapshot["revision"]["refused"]:
                print(f"lambdalite: the last edit was refused: {snapshot['revision']['refused']} "
                      f"(revision {rev.number} keeps running)", file=sys.stderr)
        print(json.dumps(snapshot, indent=2) if args.json else _table(snapshot))
        return 0
    if args.command == "invoke":
        return _invoke(args, client, registry)
    return _dlq(args, client, registry)


def _status_without_registry(args: argparse.Namespace, settings: Settings, mistake: LambdaliteError) -> int:
    """``status`` while lambdalite.toml has a mistake: the functions Redis knows of (their queues),
    read as usual, and the mistake as one line on stderr; exit status 1. A running stack read its
    file when it started, so what it does goes on being shown."""
    try:
        client = _connected(settings)
    except RedisUnavailableError:
        print(f"lambdalite: {mistake}", file=sys.stderr)
        raise
    print(f"lambdalite: {mistake} (the status below is of the functions Redis knows)", file=sys.stderr)
    snapshot = status(client, sorted(_queued_names(client)))
    print(json.dumps(snapshot, indent=2) if args.json else _table(snapshot))
    return 1


def _queued_names(client: redis.Redis) -> list[str]:
    """The functions Redis has a queue for (those of earlier revisions too)."""
    prefix = rqlayout.QUEUE_PREFIX
    queues = (k.decode(errors="replace").removeprefix(prefix)
              for k in cast("set[bytes]", client.smembers(rqlayout.QUEUES_KEY)))
    return [n for q in queues if (n := function_of_queue(q))]


def _reload(args: argparse.Namespace, client: redis.Redis, registry: Registry, settings: Settings) -> int:
    """Validate the files as ``check`` does, ask the scaler to take them, and wait until the running
    revision is theirs (the scaler validates them again, and refuses them in its log if they fail)."""
    from broker.environment import check_handlers

    check_handlers(registry, settings)
    sha, code = revision.digest(registry.path.read_bytes()), revision.code_digests(registry)
    if not client.publish(revision.RELOAD_CHANNEL, "force"):
        raise InvocationError("no scaler is running to reload (start the stack with `make run`)")
    deadline = time.monotonic() + args.wait
    while True:
        found = revision.read(client)
        if found is not None and found[0].sha256 == sha and found[0].code == code:
            print(f"revision {found[0].number} of {registry.path.name} is running")
            return 0
        refused = revision.refused(client)
        if refused and found is not None and found[0].sha256 != sha:
            raise InvocationError(f"the scaler refused it: {refused}")
        if time.monotonic() >= deadline:
            raise InvocationError(f"the stack did not take it within {args.wait:g} s (see the scaler's log)")
        time.sleep(0.05)


def _invoke(args: argparse.Namespace, client: Any, registry: Registry) -> int:
    fn = registry.get(args.function)
    payload: Any = {}
    if args.event is not None:
        try:
            payload = parse_json(args.event.read_bytes())
        except (OSError, ValueError) as e:
            raise InvocationError(f"{args.event}: not a readable JSON file: {e}") from e
    event = Event(function=fn.name, payload=payload, source="invoke",
                  invocation_type="Event" if args.is_async else "RequestResponse")
    Publisher(client, registry).publish(event)
    if args.is_async:
        print(event.id)
        return 0
    wait = args.wait if args.wait is not None else fn.timeout + WAIT_MARGIN
    outcome = results.wait(client, event.id, wait)
    if outcome is None:
        raise InvocationError(f"no result for {event.id} within {wait:g} s (is the scaler running?)")
    if outcome.ok:
        print(json.dumps(outcome.result))
        return 0
    print(json.dumps(outcome.error))
    return 1


def _known(client: Any, registry: Registry, name: str) -> str:
    """``name`` if the running revision has it, or if Redis still holds a queue of it (a function
    removed by a reload: its dead letters stay readable)."""
    if name in registry or name in _queued_names(client):
        return name
    return registry.get(name).name  # raises UnknownFunctionError


def _dlq(args: argparse.Namespace, client: Any, registry: Registry) -> int:
    if args.action == "list":
        names = [_known(client, registry, args.function)] if args.function else list(registry.functions)
        rows = [{"function": n, **e} for n in names for e in deadletter.entries(client, n)]
        print(json.dumps(rows, indent=2))
    elif args.action == "replay":
        fn = registry.get(args.function)
        done = deadletter.replay(client, Publisher(client, registry), fn.name, args.ids or None)
        print(json.dumps({"replayed": done}))
    elif args.action == "park":
        if args.function in registry:
            raise LambdaliteError(f"function {args.function!r} is running: dlq park is for the queue of a removed one")
        print(json.dumps({"parked": deadletter.park(client, _known(client, registry, args.function))}))
    else:
        print(json.dumps({"purged": deadletter.purge(client, _known(client, registry, args.function))}))
    return 0


def _cost(args: argparse.Namespace, client: Any, registry: Registry) -> int:
    from broker import cost

    names = list(registry.functions)
    priced = {name: cost.price(use) for name, use in cost.usage(client, names).items()}
    print(json.dumps({"functions": priced, "prices": cost.price_table()}, indent=2) if args.json
          else cost.table(priced))
    return 0


def _next_ticks(snapshot: dict[str, Any], registry: Registry, settings: Settings) -> None:
    """Each function's schedules with their next tick, in its row of ``snapshot``."""
    for schedule, tick in schedules.next_ticks(registry, schedules.clock(settings)()):
        row = snapshot["functions"][schedule.function.name]
        row.setdefault("schedules", []).append({
            "rule": schedule.rule, "expression": schedule.trigger.expression, "timezone": schedule.trigger.timezone,
            "next_tick": schedules.iso(tick) if tick is not None else None,
        })


def _table(snapshot: dict[str, Any]) -> str:
    cols = ["queued", "running", "workers", "succeeded", "failed", "dead"]
    rows = [["function", *cols, "next tick", "last decision"]]
    for name, row in snapshot["functions"].items():
        d = row.get("last_decision")
        name = f"{name} (removed)" if row.get("removed") else name
        ticks = [s["next_tick"] for s in row.get("schedules", ())]
        upcoming = min((t for t in ticks if t), default="never" if ticks else "-")
        rows.append([name, *[str(row[c]) for c in cols], upcoming, f"{d['action']}: {d['reason']}" if d else "-"])
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    rev = snapshot.get("revision")
    tail = f"\nrunning revision {rev['number']} of the config (sha256 {rev['sha256'][:12]})" if rev else ""
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)).rstrip() for r in rows) + tail


if __name__ == "__main__":
    main()
