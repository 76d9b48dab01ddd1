"""A host's lease: another host's worker counts as gone once that host's scaler stops renewing its
liveness key, judged only by a scaler that has renewed its own for as long (after a Redis outage
every scaler gets its turn first). An in-process scaler with a fake clock on the test's Redis."""

from __future__ import annotations

from pathlib import Path

import pytest
import redis

from broker.registry import load_registry
from broker.settings import load_settings
from broker.stats import alive_key
from workers.processes import worker_name
from workers.scaler import ALIVE_TTL
from workers.scaler import Scaler as InProcess


def test_another_hosts_worker_is_gone_when_its_hosts_lease_runs_out(
        project: Path, redis_url: str, r: redis.Redis, monkeypatch: pytest.MonkeyPatch) -> None:
    (project / "lambdalite.toml").write_text('[functions.rec]\nhandler = "handlers.payments.handler"\n')
    monkeypatch.setenv("LAMBDALITE_SANDBOX_USER", "root")
    now = [100.0]
    scaler = InProcess(load_settings(), load_registry(project / "lambdalite.toml"), r, spawn=lambda fn: 0,
                       clock=lambda: now[0])
    other = worker_name("elsewhere", "0ther5id", "rec", 4242)
    r.hset(f"rq:worker:{other}", "state", "busy")
    r.set(alive_key("elsewhere.0ther5id"), 1)

    def step_to(t: float) -> None:
        now[0] = t
        scaler.step(t)

    step_to(100.0)
    r.delete(alive_key("elsewhere.0ther5id"))  # that host stops renewing
    assert not scaler.is_dead(other), "a scaler just started judges nobody before its own lease has run once"
    for t in (101.0, 102.0, 103.0):
        step_to(t)
    assert scaler.is_dead(other), "its lease ran out while this scaler renewed its own"
    r.set(alive_key("elsewhere.0ther5id"), 1)
    assert not scaler.is_dead(other), "renewed: alive"

    r.delete(alive_key("elsewhere.0ther5id"))
    step_to(103.0 + ALIVE_TTL + 5)  # this scaler could not renew for longer than the lease (an outage)
    assert not scaler.is_dead(other), "after a gap of its own it waits for every host to renew first"
    for t in range(1, ALIVE_TTL + 1):
        step_to(103.0 + ALIVE_TTL + 5 + t)
    assert scaler.is_dead(other)

    r.delete(f"rq:worker:{other}")
    r.set(alive_key("elsewhere.0ther5id"), 1)
    assert scaler.is_dead(other), "a worker whose RQ key expired is gone whatever its host's lease"
