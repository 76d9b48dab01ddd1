"""The long fault run, and what Redis's fsync policy costs and keeps.

1. 10,000 events through all three sources (files, SQLite rows, async webhooks) into a recording
   handler while every kind of process is SIGKILLed three times at random moments (files, sqlite,
   webhook, scaler, redis-server, a worker, an invocation's own process) and Ctrl-C is pressed
   twice; the stack is started again after each. Prints lost (must be 0), duplicated, and the
   recovery after each kind of fault (tests/faults/chaos.py does the work).
2. A 10 s Redis outage under load: no process may exit; prints how soon every source flows again
   once Redis is back.
3. ``appendfsync everysec`` against ``always``: acknowledged publishes per second, one event per
   transaction (the cost), and acknowledged events missing after a SIGKILL of redis-server in the
   middle of a stream of publishes (what a process crash loses; a power cut is not tried here).

4. Redis with Sentinel (a primary, a replica, three sentinels): the Procfile's stack under load
   while the primary is SIGKILLed, three times (how soon every source flows again after the
   promotion, acknowledged events lost); and what ``LAMBDALITE_REDIS_WAIT_REPLICAS=1`` costs a
   publish, and keeps, against publishes that do not wait (acknowledged events missing on the
   promoted replica after a SIGKILL of the primary in mid-stream). Written into docs/deploy.md.

5. Two hosts apart (network namespaces, tests/hostkit.py: root only) sharing one Redis over TCP,
   file events dropped into both hosts' buckets, while whole hosts are struck: SIGKILL of every
   process of a host's stack (started again 3 s later), its cable pulled for 8 s, and a worker
   SIGKILLed. Prints lost (must be 0), run twice, and how soon each struck host's events ran
   again. Not in the default parts: ``--parts 5``.

Run: ``.venv/bin/python bench/chaos.py`` (about 8 minutes). ``--events N`` changes part 1's size.
"""

from __future__ import annotations

import sys as _sys
from pathlib import Path as _Path

# This folder holds http.py (bench/http.py), which would shadow the standard library's http package.
_sys.path[:] = [p for p in _sys.path if _Path(p or ".").resolve() != _Path(__file__).resolve().parent]

import argparse
import os
import random
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import redis

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.report import table, write_section  # noqa: E402
from broker import settings  # noqa: E402
from broker.connection import connect  # noqa: E402
from broker.envelope import Event  # noqa: E402
from broker.queues import Publisher  # noqa: E402
from broker.redis_server.embedded import RedisServer  # noqa: E402
from broker.registry import load_registry  # noqa: E402
from tests.faults import chaos  # noqa: E402
from tests.sentinelkit import SentinelSet  # noqa: E402


def long_run(folder: Path, events: int, seed: int) -> chaos.Report:
    faults = [*chaos.KINDS * 3, "ctrl-c", "ctrl-c"]
    random.Random(seed).shuffle(faults)
    per_source = -(-events // 3)
    report = chaos.run(folder / "long", per_source=per_source, rate=40, faults=faults, seed=seed,
                       say=lambda line: print(f"    {line}", flush=True))
    return report


def outage_run(folder: Path, seed: int) -> chaos.Report:
    return chaos.run(folder / "outage", per_source=300, rate=10, faults=["outage"], seed=seed,
                     say=lambda line: print(f"    {line}", flush=True))


def publish_rate(publisher: Publisher, publishes: int) -> float:
    """Events published (acknowledged) per second, ``publishes`` of them one after another."""
    started = time.perf_counter()
    for n in range(publishes):
        publisher.publish(Event(function="fn", payload={"n": n}))
    return publishes / (time.perf_counter() - started)


def publish_until(publisher: Publisher, kill: Callable[[], object], after: float = 1.5) -> list[str]:
    """Publish events from a thread, call ``kill`` ``after`` seconds in, and return the ids of the events
    acknowledged (publish returned) until the thread stopped: at the first error or once ``kill`` returned."""
    acked: list[str] = []
    stop = threading.Event()

    def stream() -> None:
        n = 0
        while not stop.is_set():
            event = Event(function="fn", payload={"n": n})
            try:
                publisher.publish(event)
            except redis.RedisError:
                return
            acked.append(event.id)
            n += 1

    thread = threading.Thread(target=stream)
    thread.start()
    time.sleep(after)
    kill()
    stop.set()
    thread.join()
    return acked


def fsync_run(folder: Path, mode: str, publishes: int) -> tuple[float, int, int]:
    """(acknowledged publishes/s, acknowledged before the SIGKILL, of those missing after restart)."""
    (folder / "lambdalite.toml").write_text('[functions.fn]\nhandler = "handlers.thumbnail.handler"\n')
    registry = load_registry(folder / "lambdalite.toml")
    server = RedisServer(folder / f"redis-{mode}", appendonly=True, appendfsync=mode).start()
    client = redis.Redis.from_url(server.url)
    publisher = Publisher(client, registry)
    rate = publish_rate(publisher, publishes)

    client.flushall()
    acked = publish_until(publisher, server.kill)  # SIGKILL in mid-stream: a process crash, not a power cut
    client.close()
    server.start()  # the same folder: it loads the append-only file
    client = redis.Redis.from_url(server.url)
    queued = {raw.decode() for raw in client.lrange("rq:queue:lambdalite.fn", 0, -1)}
    missing = sum(1 for event_id in acked if event_id not in queued or not client.exists(f"rq:job:{event_id}"))
    client.close()
    server.stop()
    return rate, len(acked), missing


def failover_runs(folder: Path, seed: int, runs: int = 3) -> list[chaos.Report]:
    return [chaos.run(folder / f"failover-{i}", per_source=200, rate=10, faults=["failover"], seed=seed + i,
                      say=lambda line: print(f"    {line}", flush=True)) for i in range(runs)]


def wait_run(folder: Path, replicas: int, publishes: int) -> tuple[float, int, int]:
    """With publishes waiting for ``replicas`` replicas: (acknowledged publishes/s, acknowledged before
    the primary's SIGKILL, of those missing on the promoted replica)."""
    (folder / "lambdalite.toml").write_text('[functions.fn]\nhandler = "handlers.thumbnail.handler"\n')
    registry = load_registry(folder / "lambdalite.toml")
    os.environ["LAMBDALITE_REDIS_WAIT_REPLICAS"] = str(replicas)
    settings.current.cache_clear()
    try:
        with SentinelSet(folder / f"sentinel-{replicas}") as servers:
            client = connect(servers.url)
            publisher = Publisher(client, registry)
            rate = publish_rate(publisher, publishes)
            client.flushall()
            killed: list[Any] = []
            acked = publish_until(publisher, lambda: killed.append(servers.kill_primary()))
            old = killed[0]
            servers.wait_promotion(old)
            promoted = servers.data_client(servers.primary_port)
            queued = {raw.decode() for raw in promoted.lrange("rq:queue:lambdalite.fn", 0, -1)}
            missing = sum(1 for event_id in acked if event_id not in queued)
            client.close()
            return rate, len(acked), missing
    finally:
        del os.environ["LAMBDALITE_REDIS_WAIT_REPLICAS"]
        settings.current.cache_clear()


HOST_FAULTS = ("host-kill", "host-cut", "worker")


def hosts_run(folder: Path, events: int, seed: int, rate: float = 40.0) -> tuple[int, list[str], int, list[str]]:
    """Part 5: (events accepted, lost, run twice, what each fault did)."""
    from tests import hostkit

    rng = random.Random(seed)
    why = hostkit.unavailable()
    if why is not None:
        raise SystemExit(f"part 5 needs network namespaces: {why}")
    config = ('[functions.burst]\nhandler = "host_recorder.handler"\ntimeout = 10\nretries = 8\n\n'
              '[[functions.burst.triggers]]\nsource = "files"\nbucket = "inbox"\nsuffix = ".txt"\n')
    recorder = ROOT / "tests" / "fixtures" / "host_recorder.py"
    said: list[str] = []
    with hostkit.Network(folder / "hosts", hosts=2) as net:
        hosts = {ns: hostkit.Host(net, ns, folder / "hosts" / ns, config, {"host_recorder.py": recorder},
                                  LAMBDALITE_MAX_WORKERS="2", LAMBDALITE_IDLE_TIMEOUT="5", HOSTS_PAUSE="0.02",
                                  HOSTS_RECORDS=str(folder / "hosts" / ns / "records"))
                 for ns in net.hosts}
        for host in hosts.values():
            (host.folder / "buckets" / "inbox").mkdir(parents=True)
            (host.folder / "records").mkdir()
            host.start()

        def runs() -> dict[str, int]:
            seen: dict[str, int] = {}
            for path in (folder / "hosts").glob("*/records/*.log"):
                for line in path.read_text().splitlines():
                    key = line.split()[0]
                    seen[key] = seen.get(key, 0) + 1
            return seen

        accepted: list[str] = []
        stop = threading.Event()

        def produce() -> None:  # a file a tick, into each host's bucket in turn (a down host's waits)
            n, next_at = 0, time.monotonic()
            while n < events:
                ns = net.hosts[n % len(net.hosts)]
                name = f"{ns}-{n}.txt"
                (hosts[ns].folder / "buckets" / "inbox" / name).write_text(f"{n}\n")
                accepted.append(name)
                n += 1
                next_at += 1 / rate
                time.sleep(max(0.0, next_at - time.monotonic()))
            stop.set()

        try:
            deadline = time.monotonic() + 120
            for ns, host in hosts.items():
                (host.folder / "buckets" / "inbox" / f"warm-{ns}.txt").write_text("warm\n")
            while not {f"warm-{ns}.txt" for ns in hosts} <= set(runs()):
                if time.monotonic() > deadline:
                    raise SystemExit("the hosts did not come up")
                time.sleep(0.2)
            producer = threading.Thread(target=produce)
            producer.start()
            faults = [HOST_FAULTS[i % len(HOST_FAULTS)] for i in range(max(3, events // 1500))]
            rng.shuffle(faults)
            gap = events / rate / (len(faults) + 1)
            for fault in faults:
                time.sleep(rng.uniform(0.5, 1.5) * gap)
                ns = rng.choice(net.hosts)
                host = hosts[ns]
                if fault == "host-kill":
                    host.kill()
                    time.sleep(3)
                    host.start()
                elif fault == "host-cut":
                    net.cut(ns)
                    time.sleep(8)
                    net.mend(ns)
                else:
                    workers = [p for p in host.family() if "workers.scaler" in " ".join(p.cmdline() or [])]
                    kids = [k for w in workers for k in w.children()]
                    if kids:
                        rng.choice(kids).kill()
                said.append(f"{fault} {ns} at {len(accepted)} events")
                print(f"    {said[-1]}", flush=True)
            producer.join()
            deadline = time.monotonic() + 180
            while not set(accepted) <= set(runs()) and time.monotonic() < deadline:
                time.sleep(0.5)
            seen = runs()
            lost = sorted(set(accepted) - set(seen))
            twice = sum(1 for k in accepted if seen.get(k, 0) > 1)
        finally:
            for host in hosts.values():
                host.stop()
    return len(accepted), lost, twice, said


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--events", type=int, default=10_000)
    parser.add_argument("--seed", type=int, default=int(time.time()) % 1_000_000)
    parser.add_argument("--parts", default="1234", help="which parts to run, e.g. 1 or 24")
    parser.add_argument("--keep", action="store_true", help="keep the working folder (logs, Redis data)")
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="ll-chaos-"))
    print(f"seed {args.seed}; working in {folder}", flush=True)
    try:
        lost = []
        if "1" in args.parts:
            print(f"1. {args.events} events, every process SIGKILLed 3 times, Ctrl-C twice", flush=True)
            report = long_run(folder, args.events, args.seed)
            lost += report.lost
            for line in report.lines():
                print(f"  {line}")
        if "2" in args.parts:
            print("2. a 10 s Redis outage under load", flush=True)
            report = outage_run(folder, args.seed)
            lost += report.lost
            for line in report.lines():
                print(f"  {line}")
        if "3" in args.parts:
            print("3. appendfsync: 2,000 acknowledged publishes one at a time; then SIGKILL mid-stream")
            results = {mode: fsync_run(folder, mode, 2_000) for mode in ("everysec", "always")}
            base = results["everysec"][0]
            for mode, (rate, acked, missing) in results.items():
                print(f"  {mode:<9} {rate:8.0f} publishes/s ({rate / base:.2f} x everysec); SIGKILL of "
                      f"redis-server after {acked} acknowledged: {missing} missing after restart")
        if "4" in args.parts:
            print("4. Redis with Sentinel: the primary SIGKILLed under load, 3 times", flush=True)
            reports = failover_runs(folder, args.seed)
            rows = []
            for report in reports:
                lost += report.lost
                for line in report.lines():
                    print(f"  {line}")
                _, killed, promoted = report.struck[0]
                flowing = report.recoveries[0][2] if report.recoveries else float("nan")
                rows.append([f"{promoted - killed:.2f} s", f"{flowing:.2f} s",
                             f"{len(report.lost)} of {report.accepted}", str(report.duplicated)])
            print("   publishes waiting for a replica (LAMBDALITE_REDIS_WAIT_REPLICAS) or not: 2,000 one at a "
                  "time, then the primary SIGKILLed mid-stream", flush=True)
            waits = {replicas: wait_run(folder, replicas, 2_000) for replicas in (0, 1)}
            base = waits[0][0]
            for replicas, (rate, acked, missing) in waits.items():
                print(f"  WAIT {replicas}: {rate:8.0f} publishes/s ({rate / base:.2f} x no wait); SIGKILL of the "
                      f"primary after {acked} acknowledged: {missing} missing on the promoted replica")
            text = (table(["primary killed → replica promoted", "promotion → every source flowing",
                           "acknowledged events lost", "run twice"], rows)
                    + "\n\n" + table(["publishes", "acknowledged publishes/s", "acknowledged, then lost to a "
                                       "SIGKILL of the primary"],
                                      [[f"`LAMBDALITE_REDIS_WAIT_REPLICAS={r}`", f"{rate:.0f} ({rate / base:.2f} ×)",
                                        f"{missing} of {acked}"] for r, (rate, acked, missing) in waits.items()]))
            print("written to", write_section("deploy.md", "failover", text, "bench/chaos.py --parts 4"))
        if "5" in args.parts:
            print(f"5. two hosts apart, {args.events} file events; whole hosts SIGKILLed and cut off", flush=True)
            accepted, host_lost, twice, said = hosts_run(folder, args.events, args.seed)
            lost += host_lost
            print(f"  accepted {accepted} events; lost {len(host_lost)}; run twice {twice} "
                  f"({100 * twice / max(accepted, 1):.2f}%); faults: {len(said)}")
            if host_lost:
                print(f"  LOST: {host_lost[:20]}")
            struck = [line.split()[0] for line in said]
            kinds = ", ".join(f"{kind} ×{struck.count(kind)}" for kind in HOST_FAULTS)
            share = f"{twice} ({100 * twice / max(accepted, 1):.2f} %)"
            text = table(["file events accepted", "whole-host faults", "lost", "run twice"],
                         [[f"{accepted:,}", kinds, str(len(host_lost)), share]])
            print("written to", write_section("deploy.md", "hosts-chaos", text,
                                              f"bench/chaos.py --parts 5 --events {args.events}"))
    except BaseException:
        print(f"kept {folder} for a look")
        raise
    if lost or args.keep:
        print(f"kept {folder} for a look")
        sys.exit(1 if lost else 0)
    shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
