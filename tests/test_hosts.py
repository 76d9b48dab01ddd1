"""Several hosts on one Redis, really apart: three network namespaces (tests/hostkit.py), each
running the Procfile's stack from its own folder, and Redis in a fourth, over TCP with a password.

Each host's files source publishes the files dropped into its own bucket; any host's workers may
run them. The handler (tests/fixtures/host_recorder.py) records the host that ran each event and
when. Root is needed for the namespaces: the tests skip without it, and fail in CI (which is root).
"""

from __future__ import annotations

import os
import time
from collections import Counter, defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from broker import stats
from broker.envelope import Event
from tests import hostkit
from workers import jobs

HERE = Path(__file__).resolve().parent
WITHIN = 10.0  # seconds from a host's death to its in-flight events running on the others

CONFIG = """[functions.burst]
handler = "host_recorder.handler"
timeout = 10
retries = 8
max_concurrency = {cap}

[[functions.burst.triggers]]
source = "files"
bucket = "inbox"
suffix = ".txt"
"""


@pytest.fixture(scope="module")
def network(tmp_path_factory: pytest.TempPathFactory) -> Iterator[hostkit.Network]:
    why = hostkit.unavailable()
    if why is not None:
        if os.environ.get("CI"):
            pytest.fail(f"CI must run the multi-host tests: {why}")
        pytest.skip(why)
    with hostkit.Network(tmp_path_factory.mktemp("hosts")) as net:
        yield net


class Cluster:
    """The three hosts' stacks for one test, started with ``cap`` as the function's max_concurrency."""

    def __init__(self, network: hostkit.Network, folder: Path, cap: int, pause: float) -> None:
        self.network = network
        self.folder = folder
        network.client().flushall()
        self.hosts = {ns: hostkit.Host(network, ns, folder / ns, CONFIG.format(cap=cap),
                                       {"host_recorder.py": HERE / "fixtures" / "host_recorder.py"},
                                       LAMBDALITE_MAX_WORKERS="2", LAMBDALITE_IDLE_TIMEOUT="2",
                                       HOSTS_RECORDS=str(folder / ns / "records"), HOSTS_PAUSE=str(pause))
                      for ns in network.hosts}
        for host in self.hosts.values():  # a handler may write below its project folder
            (host.folder / "buckets" / "inbox").mkdir(parents=True)
            (host.folder / "records").mkdir()

    def start(self, timeout: float = 120) -> None:
        for host in self.hosts.values():
            host.start()
        # up once each host's scaler is alive and each host's files source has published a file
        for ns, host in self.hosts.items():
            (host.folder / "buckets" / "inbox" / f"warm-{ns}.txt").write_text("warm\n")
        self.wait(lambda: {f"warm-{ns}.txt" for ns in self.hosts} <= set(self.runs()), timeout, "every host up")
        self.wait(lambda: set(self.hosts) <= self.scalers_alive(), timeout, "every scaler alive")

    def scalers_alive(self) -> set[str]:
        client = self.network.client()
        return {key.decode().removeprefix("lambdalite:scaler-alive:").split(".")[0]
                for key in client.scan_iter("lambdalite:scaler-alive:*")}

    def drop(self, ns: str, names: list[str]) -> None:
        for name in names:
            (self.hosts[ns].folder / "buckets" / "inbox" / name).write_text(f"{name}\n")

    def runs(self) -> dict[str, list[tuple[str, float, float]]]:
        """Each key's runs: (host, start, end)."""
        out: dict[str, list[tuple[str, float, float]]] = defaultdict(list)
        for path in self.folder.glob("*/records/*.log"):
            for line in path.read_text().splitlines():
                key, host, start, end = line.split()
                out[key].append((host, float(start), float(end)))
        return out

    def in_flight(self, ns: str) -> dict[str, str]:
        """Events a worker of host ``ns`` has started and not finished: job id -> file key."""
        client = self.network.client()
        found = {}
        for member in client.zrange("rq:wip:lambdalite.burst", 0, -1):
            job_id = member.decode().split(":")[0]
            try:
                job = jobs.read(client, job_id)
            except jobs.UnreadableJob:
                continue
            if (job.worker_name or "").startswith(f"{ns}|"):
                event = Event.from_dict(job.args[0])
                found[job_id] = event.payload["Records"][0]["s3"]["object"]["key"]
        return found

    def status(self) -> dict[str, Any]:
        return stats.status(self.network.client(), ["burst"])["functions"]["burst"]  # type: ignore[no-any-return]

    def wait(self, condition: Any, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            for ns, host in self.hosts.items():
                if host.proc is not None and not host.running() and getattr(host, "expected_down", False) is False:
                    raise AssertionError(f"host {ns}'s stack exited:\n{host.output()}")
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {what}")
            time.sleep(0.1)

    def close(self) -> None:
        for host in self.hosts.values():
            host.stop()


@pytest.fixture
def cluster_factory(network: hostkit.Network, tmp_path: Path) -> Iterator[Any]:
    made: list[Cluster] = []

    def make(cap: int, pause: float) -> Cluster:
        cluster = Cluster(network, tmp_path, cap, pause)
        made.append(cluster)
        cluster.start()
        return cluster

    try:
        yield make
    finally:
        for cluster in made:
            for ns in cluster.hosts:
                network.mend(ns)
            cluster.close()


def overlap(intervals: list[tuple[float, float]]) -> int:
    """The most intervals open at one moment."""
    edges = sorted([(start, 1) for start, _ in intervals] + [(end, -1) for _, end in intervals],
                   key=lambda e: (e[0], e[1]))
    most = now = 0
    for _, step in edges:
        now += step
        most = max(most, now)
    return most


@pytest.mark.timeout(300)
def test_max_concurrency_holds_across_hosts_in_a_burst_from_all_of_them_and_each_host_scales_to_zero(
        cluster_factory: Any) -> None:
    cluster: Cluster = cluster_factory(cap=3, pause=0.3)
    names = {ns: [f"{ns}-{n}.txt" for n in range(30)] for ns in cluster.hosts}
    for ns, batch in names.items():
        cluster.drop(ns, batch)
    expected = {name for batch in names.values() for name in batch}
    cluster.wait(lambda: expected <= set(cluster.runs()), 180, "every event of the burst run")
    runs = cluster.runs()
    burst = [run for key in expected for run in runs[key]]
    across = overlap([(start, end) for _, start, end in burst])
    per_host = {ns: overlap([(s, e) for h, s, e in burst if h == ns]) for ns in cluster.hosts}
    ran_by = Counter(host for host, _, _ in burst)
    print(f"{len(expected)} events; most at once across hosts {across} (cap 3); per host {per_host} (cap 2); "
          f"run by {dict(ran_by)}")
    assert across <= 3, "max_concurrency holds across every host"
    assert all(most <= 2 for most in per_host.values()), "LAMBDALITE_MAX_WORKERS holds on each host"
    assert len(ran_by) >= 2, "the burst was shared between hosts"
    assert [key for key in expected if len(runs[key]) > 1] == [], "no event ran twice"
    # scale to zero on every host: no worker left anywhere, every scaler still alive
    cluster.wait(lambda: not cluster.network.client().smembers("rq:workers"), 60, "every host back to zero workers")
    assert set(cluster.hosts) <= cluster.scalers_alive()


@pytest.mark.timeout(300)
def test_a_host_sigkilled_mid_burst_has_its_in_flight_events_run_on_the_others(cluster_factory: Any) -> None:
    """A burst the hosts can drain (each event's retry waits behind the queue like any other): the
    dead host's in-flight events are taken over once its lease runs out (its scaler's liveness key,
    3 s), retried after the function's backoff (1 s), and start again on the others within 10 s."""
    cluster: Cluster = cluster_factory(cap=6, pause=3.0)
    victim, *others = cluster.hosts
    names = [f"{ns}-{n}.txt" for ns in others for n in range(5)]
    for ns in others:
        cluster.drop(ns, [name for name in names if name.startswith(ns)])
    cluster.wait(lambda: bool(cluster.in_flight(victim)), 120, f"{victim} running events")
    held = cluster.in_flight(victim)  # what it runs at the kill
    cluster.hosts[victim].expected_down = True  # type: ignore[attr-defined]
    cluster.hosts[victim].kill()
    killed = time.time()
    keys = set(held.values())
    client = cluster.network.client()

    def started() -> set[str]:
        return {member.decode().split(":")[0] for member in client.zrange("rq:wip:lambdalite.burst", 0, -1)}

    cluster.wait(lambda: not started() & set(held), 60, "the dead host's events taken over")
    taken = time.time() - killed
    cluster.wait(lambda: all(any(h != victim for h, _, _ in cluster.runs()[k]) for k in keys), 60,
                 "the dead host's events run elsewhere")
    cluster.wait(lambda: set(names) <= set(cluster.runs()), 180, "every event run")
    runs = cluster.runs()
    again = {k: min(s for h, s, _ in runs[k] if h != victim) - killed for k in keys}
    twice = {k for k in names if len(runs[k]) > 1}
    print(f"{victim} SIGKILLed holding {len(keys)} events: taken over {taken:.2f} s after the kill, started "
          f"again on the others {min(again.values()):.2f}-{max(again.values()):.2f} s after it; "
          f"lost {len(set(names) - set(runs))} of {len(names)}; run twice {len(twice)}")
    assert max(again.values()) < WITHIN, again
    assert twice <= keys, f"only an event the host was running when it died may have run twice: {twice - keys}"


@pytest.mark.timeout(300)
def test_a_host_cut_off_and_brought_back_settles_no_event_twice_and_rejoins(cluster_factory: Any) -> None:
    """The host's cable is pulled while it runs events longer than its lease: the others take them
    over and run them again. Its handlers, cut off, still finish there (at least once: a handler's
    effects may happen twice, as after any crash); when its cable is back its outcomes are dropped,
    so each event is settled once, and its scaler and files source carry on by themselves."""
    cluster: Cluster = cluster_factory(cap=6, pause=6.0)
    victim, *others = cluster.hosts
    names = [f"{ns}-{n}.txt" for ns in others for n in range(4)]
    for ns in others:
        cluster.drop(ns, [name for name in names if name.startswith(ns)])
    cluster.wait(lambda: bool(cluster.in_flight(victim)), 120, f"{victim} running events")
    cluster.network.cut(victim)
    cut = time.time()
    held = cluster.in_flight(victim)  # read after the cut: it can take nothing more
    keys = set(held.values())
    cluster.wait(lambda: all(any(h != victim for h, _, _ in cluster.runs()[k]) for k in keys), 60,
                 "the cut-off host's events run elsewhere")
    taken = max(min(s for h, s, _ in cluster.runs()[k] if h != victim) for k in keys) - cut
    cluster.network.mend(victim)
    mended = time.time()
    cluster.wait(lambda: set(names) <= set(cluster.runs()), 120, "every event run")
    # it rejoins: its scaler is alive again, and files dropped into its bucket run
    cluster.wait(lambda: victim in cluster.scalers_alive(), 60, f"{victim}'s scaler alive again")
    after = [f"{victim}-after-{n}.txt" for n in range(6)]
    cluster.drop(victim, after)
    cluster.wait(lambda: set(after) <= set(cluster.runs()), 120, f"{victim}'s files source publishing again")
    expected = len(names) + len(after) + len(cluster.hosts)  # and the warm-up events
    cluster.wait(lambda: cluster.status()["succeeded"] >= expected and cluster.status()["queued"] == 0
                 and cluster.status()["running"] == 0, 60, "every outcome recorded")
    time.sleep(2)  # a late outcome of the cut-off host would be counted by now
    row = cluster.status()
    runs = cluster.runs()
    twice = {k for k in names + after if len(runs[k]) > 1}
    log = cluster.hosts[victim].output()
    print(f"{victim} cut off holding {len(keys)} events; they started again elsewhere {taken:.2f} s after the cut; "
          f"cable back after {mended - cut:.2f} s; succeeded {row['succeeded']} of {expected}, "
          f"retried {row['retried']}; handlers that ran on both sides {len(twice)}")
    assert row["succeeded"] == expected, "each event settled once: the cut-off host's late outcomes were dropped"
    assert twice <= keys, f"only events in flight at the cut ran on both sides: {twice - keys}"
    assert "was taken over while this host's lease ran out" in log or not twice
    assert taken < WITHIN + 6.0  # the lease, the retry's backoff, and a handler of 6 s still running beside it
