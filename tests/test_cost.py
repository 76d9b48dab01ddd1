"""What each function would cost on Lambda: billed duration with INIT, GB-seconds, dollars at list
price; counted by the real workers, shown by ``lambdalite status --cost`` and on ``/metrics``."""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from broker import cost, logstore, prices
from broker.registry import load_registry
from sources.http.metrics import HttpMetrics
from tests.stack import Scaler, cli, invoke

# Three REPORT lines as Lambda writes them, one a cold start; the figures below are worked by hand.
REPORTS = [
    "REPORT RequestId: a\tDuration: 2.45 ms\tBilled Duration: 215 ms\tMemory Size: 128 MB\tMax Memory Used: 40 MB"
    "\tInit Duration: 212.23 ms\tMax Ephemeral Storage Used: 0.0 MB",
    "REPORT RequestId: b\tDuration: 100.00 ms\tBilled Duration: 100 ms\tMemory Size: 1024 MB\tMax Memory Used: 90 MB"
    "\tMax Ephemeral Storage Used: 0.0 MB",
    "REPORT RequestId: c\tDuration: 0.31 ms\tBilled Duration: 1 ms\tMemory Size: 512 MB\tMax Memory Used: 30 MB"
    "\tMax Ephemeral Storage Used: 0.0 MB\tStatus: error",
]


def test_billed_duration_includes_init_rounded_up_to_the_ms() -> None:
    assert cost.billed_ms(2.45, 212.23) == 215  # 214.68 ms -> 215
    assert cost.billed_ms(100.0) == 100
    assert cost.billed_ms(100.001) == 101
    assert cost.billed_ms(0.31) == 1
    assert cost.billed_ms(0.1 + 0.2, 1.7) == 2, "float noise (2.0000000000000004) does not bill a ms more"


def test_cost_of_report_lines_worked_by_hand() -> None:
    uses = [cost.from_report(line) for line in REPORTS]
    assert uses[0] == cost.Usage(requests=1, billed_ms=215, mb_ms=215 * 128, inits=1, init_ms=213)
    total = uses[0] + uses[1] + uses[2]
    # 215 ms x 128 MB + 100 ms x 1024 MB + 1 ms x 512 MB = 27,520 + 102,400 + 512 = 130,432 MB-ms
    assert total == cost.Usage(requests=3, billed_ms=316, mb_ms=130_432, inits=1, init_ms=213)
    priced = cost.price(total)
    assert priced["gb_seconds"] == 0.127375  # 130,432 / 1024 / 1000
    # 3 requests x $0.20 / 1e6 = $0.0000006; 0.127375 GB-s x $0.0000166667 = $0.00000212292...
    assert priced["usd"]["x86_64"] == pytest.approx(0.0000027229, abs=1e-10)
    # 0.127375 GB-s x $0.0000133334 = $0.00000169834...
    assert priced["usd"]["arm64"] == pytest.approx(0.0000022983, abs=1e-10)
    assert priced["usd_after_free_tier"] == {"x86_64": 0.0, "arm64": 0.0}
    with pytest.raises(ValueError, match="not a REPORT line"):
        cost.from_report("END RequestId: a")


def test_free_tier_is_shown_apart() -> None:
    # 2,000,000 invocations of 1 s at 512 MB: 1,000,000 GB-s.
    use = cost.Usage(requests=2_000_000, billed_ms=2_000_000_000, mb_ms=2_000_000 * 512 * 1000)
    priced = cost.price(use)
    assert priced["gb_seconds"] == 1_000_000
    assert priced["usd"]["x86_64"] == pytest.approx(0.40 + 16.6667)
    assert priced["usd"]["arm64"] == pytest.approx(0.40 + 13.3334)
    # Less a month's 1,000,000 requests and 400,000 GB-s: 1e6 x 0.20/1e6 + 600,000 GB-s at the price.
    assert priced["usd_after_free_tier"]["x86_64"] == pytest.approx(0.20 + 10.00002)
    assert priced["usd_after_free_tier"]["arm64"] == pytest.approx(0.20 + 8.00004)
    assert cost.price_table()["as_of"] == prices.AS_OF.isoformat()


FUNCTIONS = """
[functions.small]
handler = "costly.nap"
memory = 256
[functions.big]
handler = "costly.nap"
memory = 1024
[functions.idle]
handler = "costly.nap"
"""

HANDLER = '''
import time


def nap(event, context):
    time.sleep(event.get("seconds", 0))
    return "ok"
'''

_REPORT = re.compile(r"Duration: ([\d.]+) ms\tBilled Duration: (\d+) ms\tMemory Size: (\d+) MB"
                     r"(?:.*\tInit Duration: ([\d.]+) ms)?")


@pytest.fixture
def stack(project: Path, redis_url: str) -> Iterator[Scaler]:
    (project / "costly.py").write_text(HANDLER)
    (project / "lambdalite.toml").write_text(FUNCTIONS)
    with Scaler(project, LAMBDALITE_IDLE_TIMEOUT="60") as scaler:
        yield scaler


def test_status_cost_matches_the_report_lines(stack: Scaler, r: redis.Redis, redis_url: str,
                                              project: Path) -> None:
    for seconds in (0.05, 0, 0.02):
        assert invoke(redis_url, project, "small", {"seconds": seconds}).ok
    assert invoke(redis_url, project, "big", {"seconds": 0.01}).ok
    # By hand from the REPORT lines the workers wrote (read back from the log store).
    expected: dict[str, dict[str, int]] = {}
    for name in ("small", "big"):
        rows = expected[name] = {"requests": 0, "billed_ms": 0, "mb_ms": 0, "cold_starts": 0}
        for entry in logstore.entries(r, name, since_ms=0):
            match = _REPORT.search(entry.lines[-1][1])
            assert match, entry.lines[-1]
            duration, billed, memory, init = match.groups()
            assert float(duration) + float(init or 0) <= int(billed) < float(duration) + float(init or 0) + 1.02
            rows["requests"] += 1
            rows["billed_ms"] += int(billed)
            rows["mb_ms"] += int(billed) * int(memory)
            rows["cold_starts"] += init is not None
    assert expected["small"]["requests"] == 3 and expected["small"]["cold_starts"] == 1
    assert expected["big"]["cold_starts"] == 1
    assert expected["small"]["billed_ms"] >= 70

    done = cli(project, "status", "--cost", "--json")
    assert done.returncode == 0, done.stderr
    shown = json.loads(done.stdout)
    for name, rows in expected.items():
        got = shown["functions"][name]
        assert {k: got[k] for k in rows} == rows
        gbs = rows["mb_ms"] / 1024 / 1000
        assert got["gb_seconds"] == pytest.approx(gbs)
        assert got["usd"]["x86_64"] == pytest.approx(rows["requests"] * 0.2e-6 + gbs * 0.0000166667, abs=1e-8)
        assert got["usd"]["arm64"] == pytest.approx(rows["requests"] * 0.2e-6 + gbs * 0.0000133334, abs=1e-8)
    assert shown["functions"]["idle"]["requests"] == 0 and shown["functions"]["idle"]["usd"]["x86_64"] == 0
    assert shown["prices"]["usd_per_gb_second"] == {"x86_64": 0.0000166667, "arm64": 0.0000133334}

    table = cli(project, "status", "--cost")
    assert table.returncode == 0, table.stderr
    lines = table.stdout.splitlines()
    assert lines[0].split() == ["function", "requests", "cold", "starts", "billed", "ms", "GB-s", "x86", "$", "arm",
                                "$"]
    small = next(line.split() for line in lines if line.startswith("small "))
    assert small[1:4] == ["3", "1", f"{expected['small']['billed_ms']:,}"]
    assert any(line.startswith("total ") for line in lines)
    assert "Free tier (per account and month, not included above): 1,000,000 requests" in table.stdout

    # The same figures on /metrics.
    metrics = HttpMetrics(r, load_registry(project / "lambdalite.toml")).render().decode()
    assert 'lambdalite_billed_requests_total{function="small"} 3.0' in metrics
    big_ms = expected["big"]["billed_ms"]
    assert f'lambdalite_billed_duration_seconds_total{{function="big"}} {big_ms / 1000}' in metrics
    gbs_line = next(line for line in metrics.splitlines()
                    if line.startswith('lambdalite_billed_gb_seconds_total{function="small"}'))
    assert math.isclose(float(gbs_line.split()[-1]), expected["small"]["mb_ms"] / 1024 / 1000)
    assert 'lambdalite_cold_starts_total{function="small"} 1.0' in metrics
    assert 'lambdalite_lambda_cost_usd{architecture="arm64",function="big"}' in metrics


def test_counters_survive_bad_values(r: redis.Redis) -> None:
    r.hset(cost.cost_key("f"), mapping={"requests": "many", "billed_ms": "7"})
    with r.pipeline() as pipe:
        cost.record(pipe, "f", 128, 10, None)
        pipe.execute()
    assert cost.usage(r, ["f"])["f"] == cost.Usage(requests=1, billed_ms=17, mb_ms=1280, inits=0, init_ms=0)
    r.delete(cost.cost_key("f"))
    r.set(cost.cost_key("f"), "a string")
    assert cost.usage(r, ["f"])["f"] == cost.Usage()  # read: logged and counted as 0
    with r.pipeline() as pipe:
        cost.record(pipe, "f", 128, 3, 2.5)
        pipe.execute()
    assert cost.usage(r, ["f"])["f"] == cost.Usage(requests=1, billed_ms=3, mb_ms=384, inits=1, init_ms=3)
