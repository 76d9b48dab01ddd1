"""A warm sandbox stays the same size however many invocations of the same handler it runs.

The real scaler, its worker and the sandbox run a webhook handler (an API Gateway event in, an API
Gateway response out) thousands of times; the handler itself reports what its process holds: the C
library's heap in use (``mallinfo2``: what a value kept by the C environment, or any C-level leak,
adds to) and Python's live objects. With a private /tmp and without one (where each invocation gets
a TMPDIR of its own: the C library's ``setenv`` keeps every value TMPDIR was given, about 100 bytes
an invocation, when that value is a new path each time).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
import redis

from broker import connection, results
from sources.http import apigateway
from tests.stack import Scaler, invoke, publish

HANDLER = '''
import ctypes
import gc


class _Mallinfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks",
                 "keepcost")]


_libc = ctypes.CDLL(None)
_libc.mallinfo2.restype = _Mallinfo2


def hook(event, context):
    if event.get("measure"):
        gc.collect()
        return {"heap": _libc.mallinfo2().uordblks, "objects": len(gc.get_objects())}
    return {"statusCode": 200, "headers": {"content-type": "text/plain"}, "body": "ok"}
'''

RUNS = 2000


def _request(n: int) -> dict[str, Any]:
    return apigateway.request_event(
        method="POST", path="/hook", query_string=b"", body=b'{"n": %d}' % n, route_key="POST /hook",
        headers=[(b"host", b"127.0.0.1:8000"), (b"content-type", b"application/json"),
                 (b"user-agent", b"Python-urllib/3.11")],
        path_parameters={}, request_id=f"req-{n:08d}", source_ip="127.0.0.1")


def _run(redis_url: str, project: Path, runs: int) -> None:
    """``runs`` invocations of the webhook handler, queued at once; returns when the last is done."""
    client = redis.Redis.from_url(redis_url, socket_timeout=connection.COMMAND_TIMEOUT)
    events = [publish(redis_url, project, "hook", _request(n)) for n in range(runs)]
    for event in events[-20:]:
        assert results.wait(client, event.id, 300) is not None, "an invocation did not finish"
    deadline = time.monotonic() + 120
    while int(client.hget("lambdalite:stats:hook", "succeeded") or 0) < runs:
        assert time.monotonic() < deadline, "the invocations did not all succeed"
        time.sleep(0.2)
    client.delete("lambdalite:stats:hook")
    client.close()


def _measure(redis_url: str, project: Path) -> dict[str, int]:
    outcome = invoke(redis_url, project, "hook", {"measure": True}, wait=60)
    assert outcome.ok, outcome
    return outcome.result  # type: ignore[no-any-return]


@pytest.mark.timeout(600)
@pytest.mark.parametrize("private_tmp", ["1", "0"], ids=["private-tmp", "tmpdir-per-invocation"])
def test_a_warm_sandbox_stays_level_across_thousands_of_invocations(
        project: Path, redis_url: str, private_tmp: str) -> None:
    (project / "webhooks.py").write_text(HANDLER)
    (project / "lambdalite.toml").write_text(
        '[functions.hook]\nhandler = "webhooks.hook"\nmax_concurrency = 1\ntimeout = 30\n')
    tmp = project / "tmp"
    tmp.mkdir()
    with Scaler(project, TMPDIR=str(tmp), LAMBDALITE_PRIVATE_TMP=private_tmp, LAMBDALITE_IDLE_TIMEOUT="600",
                LAMBDALITE_OUTCOME_TTL="60") as scaler:
        _run(redis_url, project, 300)  # warm: the caches and pools a handler's first runs fill
        before = _measure(redis_url, project)
        _run(redis_url, project, RUNS)
        after = _measure(redis_url, project)
        assert "private /tmp off" in scaler.output() or private_tmp == "1"
    heap = (after["heap"] - before["heap"]) / RUNS
    objects = after["objects"] - before["objects"]
    # A leak of a value per invocation adds 100 bytes or so each; what is level moves by a few KB at most.
    assert heap < 10, f"the sandbox's C heap grew {heap:.1f} bytes an invocation ({before} -> {after})"
    assert objects < 200, f"{objects} more live Python objects after {RUNS} invocations ({before} -> {after})"
    assert list(tmp.iterdir()) == [], "the worker's folder outlived it"
