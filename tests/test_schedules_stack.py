"""Two real scalers on one Redis tick ``rate(1 minute)`` once per minute, also when one of them is
SIGKILLed between ticks and started again. The schedule's clock runs 20 times as fast (a test-only
setting of the clock alone), so a minute passes in 3 s."""

from __future__ import annotations

import json
import re
import shutil
import signal
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest

from tests.stack import Scaler
from tests.waiting import wait_until

FIXTURES = Path(__file__).parent / "fixtures"
RATE = 20  # schedule seconds per real second

TOML = """
[functions.tick]
handler = "schedule_recorder.handler"

[[functions.tick.triggers]]
source = "schedule"
expression = "rate(1 minute)"
"""


def recorded(project: Path) -> list[dict]:
    log = project / "ticks.jsonl"
    return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []


def wait_for_ticks(project: Path, n: int, timeout: float = 30) -> None:
    wait_until(lambda: len(recorded(project)) >= n, timeout, f"{n} ticks run",
               detail=lambda: f"{len(recorded(project))} ran")


def published_by(scaler: Scaler) -> list[str]:
    return re.findall(r"tick-schedule-0: tick (\S+) published", scaler.output())


@pytest.mark.timeout(120)
def test_two_scalers_run_each_minute_once_also_when_one_is_sigkilled(project: Path, redis_url: str) -> None:
    shutil.copy(FIXTURES / "schedule_recorder.py", project / "schedule_recorder.py")
    (project / "lambdalite.toml").write_text(TOML)
    clock = {"LAMBDALITE_SCHEDULE_CLOCK_RATE": str(RATE), "LAMBDALITE_SCHEDULE_CLOCK_ORIGIN": repr(time.time())}
    # two "hosts": each scaler has its own var/ (its own stack lock), both share the Redis
    origin = float(clock["LAMBDALITE_SCHEDULE_CLOCK_ORIGIN"])
    a = Scaler(project, LAMBDALITE_VAR_DIR="var-a", **clock)
    b = Scaler(project, LAMBDALITE_VAR_DIR="var-b", **clock)
    restarted = None
    try:
        wait_for_ticks(project, 3)
        # SIGKILL between ticks: half-way to the next one (the last one has run by then)
        midway = datetime.fromisoformat(recorded(project)[-1]["time"]).timestamp() + 30
        while midway < origin + (time.time() - origin) * RATE + 5:
            midway += 60
        time.sleep((midway - (origin + (time.time() - origin) * RATE)) / RATE)
        a.stop(signal.SIGKILL)
        n = len(recorded(project))
        wait_for_ticks(project, n + 3)
        restarted = Scaler(project, LAMBDALITE_VAR_DIR="var-a", **clock)
        wait_for_ticks(project, n + 5)
    finally:
        for scaler in (a, b, restarted):
            if scaler is not None and scaler.proc.poll() is None:
                scaler.stop()
    runs = recorded(project)
    ticks = [datetime.fromisoformat(run["time"]).timestamp() for run in runs]
    # one run per minute, minute after minute: nothing twice, nothing left out while a scaler ran
    assert ticks == [ticks[0] + 60 * i for i in range(len(ticks))], runs
    assert len({run["id"] for run in runs}) == len(runs)
    # and each tick published by exactly one of the scalers (the others found it done); one more tick
    # may have been published as they stopped
    logs = [published_by(s) for s in (a, b, restarted) if s is not None]
    every = sorted(t for log in logs for t in log)
    assert len(every) == len(set(every)), logs
    assert every[: len(runs)] == [run["time"] for run in runs] and len(every) - len(runs) <= 1, logs


@pytest.mark.timeout(120)
@pytest.mark.parametrize("catch_up", ["none", "latest"])
def test_a_stop_spanning_three_ticks(project: Path, redis_url: str, catch_up: str) -> None:
    """The stack stops after a tick and starts again three ticks later: with catch_up "none" the three
    are skipped (the log says so), with "latest" the third runs once; then ticks go on."""
    shutil.copy(FIXTURES / "schedule_recorder.py", project / "schedule_recorder.py")
    (project / "lambdalite.toml").write_text(TOML + f'catch_up = "{catch_up}"\n')
    origin = time.time()
    rate = RATE // 2  # a minute in 6 s: the restart below has 5.5 s to make its first step
    clock = {"LAMBDALITE_SCHEDULE_CLOCK_RATE": str(rate), "LAMBDALITE_SCHEDULE_CLOCK_ORIGIN": repr(origin)}
    first = Scaler(project, **clock)
    try:
        wait_for_ticks(project, 2)
    finally:
        first.stop()
    last = datetime.fromisoformat(recorded(project)[-1]["time"]).timestamp()
    # start again 3 min 25 s (schedule time) after the last tick run: the three ticks after it are missed
    # (a tick up to 2 s of real time, 20 s here, before the first step counts as on time), and the
    # fourth is on time if the first step comes within the next 55 s (5.5 s of real time)
    time.sleep(max(0.0, (last + 205 - (origin + (time.time() - origin) * rate)) / rate))
    second = Scaler(project, **clock)
    try:
        wait_for_ticks(project, 4 if catch_up == "latest" else 3)
    finally:
        second.stop()
    ticks = [datetime.fromisoformat(run["time"]).timestamp() - last for run in recorded(project)]
    expected = [-60, 0, 180, 240] if catch_up == "latest" else [-60, 0, 240]
    assert ticks[: len(expected)] == expected, (ticks, second.output())
    missed = ("tick-schedule-0: 3 tick(s) from {} to {} missed while no scaler ran; ".format(
        *(datetime.fromtimestamp(last + s, UTC).strftime("%Y-%m-%dT%H:%M:%SZ") for s in (60, 180))))
    said = {"none": 'skipped (catch_up = "none")', "latest": 'running the latest (catch_up = "latest"), skipping 2'}
    assert missed + said[catch_up] in second.output()
