"""Every Redis connection has explicit timeouts, and a blocking read waits for its own deadline in
slices shorter than them: an invoke of a function that runs longer than any socket timeout works."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest
import redis

from broker import connection, results
from tests.stack import Scaler, cli

pytestmark = pytest.mark.serial  # a timeout's wall-clock window (2.4 to 3.4 s): run alone (make test)

SLOW = """import time

def handler(event, context):
    time.sleep(event['seconds'])
    return {'slept': event['seconds']}
"""


def test_connect_sets_every_timeout_itself(redis_url: str) -> None:
    client = connection.connect(redis_url)
    kwargs = client.connection_pool.connection_kwargs
    assert kwargs["socket_connect_timeout"] == connection.CONNECT_TIMEOUT
    assert kwargs["socket_timeout"] == connection.COMMAND_TIMEOUT
    assert connection.COMMAND_TIMEOUT > connection.BLOCK_SLICE, "a blocking read answers before its socket gives up"
    client.close()


def test_a_wait_longer_than_the_socket_timeout_still_gets_its_outcome(
        redis_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A client whose replies may take at most 1.5 s waits 3.5 s for an outcome: it blocks in slices."""
    client = connection.connect(redis_url, retries=0, timeout=1.5)  # no retry hides a timed-out read
    writer = redis.Redis.from_url(redis_url)
    monkeypatch.setattr(connection, "BLOCK_SLICE", 1.0)  # the slice a 1.5 s socket timeout allows
    timer = threading.Timer(2.5, lambda: results.record(writer, "late", results.Outcome("succeeded", result=7)))
    try:
        timer.start()
        started = time.monotonic()
        outcome = results.wait(client, "late", 3.5)
        took = time.monotonic() - started
    finally:
        timer.join()
        client.close()
        writer.close()
    assert outcome is not None and outcome.result == 7
    assert 2.4 < took < 3.4


@pytest.mark.timeout(120)
def test_invoke_of_a_function_running_23_seconds_succeeds(project: Path, redis_url: str) -> None:
    """Longer than redis-py 8.2's default socket timeout (5 s) through all its retries (four reads of
    5 s): with the library's defaults the invoke failed after 21 s with 'Timeout reading'."""
    (project / "slow.py").write_text(SLOW)
    (project / "lambdalite.toml").write_text('[functions.slow]\nhandler = "slow.handler"\ntimeout = 30\n')
    (project / "event.json").write_text(json.dumps({"seconds": 23}))
    with Scaler(project) as scaler:
        started = time.monotonic()
        done = cli(project, "invoke", "slow", "--event", "event.json")
        took = time.monotonic() - started
        assert done.returncode == 0, done.stderr + scaler.output()
    assert json.loads(done.stdout) == {"slept": 23}
    assert done.stderr == ""
    assert took >= 23
