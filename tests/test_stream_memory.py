"""The embedded Redis keeps an event's outcome in a stream node sized for it, not Redis's 4 KB default:
a one-entry outcome stream written by the worker's own code costs a quarter of what it did."""

from __future__ import annotations

import redis

from broker import results
from broker.redis_server import embedded


def test_an_outcome_stream_of_one_entry_holds_no_4kb_node(r: redis.Redis) -> None:
    assert r.config_get("stream-node-max-bytes") == {"stream-node-max-bytes": str(embedded.STREAM_NODE_MAX_BYTES)}
    outcome = results.Outcome(status="succeeded", result={"statusCode": 200, "body": "ok"}, error=None, attempts=1,
                              duration_ms=3.2)
    with r.pipeline() as pipe:
        results.record(pipe, "00000000-0000-4000-8000-000000000000", outcome, ttl=60)
        pipe.execute()
    used = r.memory_usage(results.result_key("00000000-0000-4000-8000-000000000000"))
    assert used is not None and used < 2000, f"{used} bytes for one outcome"  # 4,760 with a 4 KB node
    # What the setting saves is measured, not assumed: the same entry in a node of Redis's default size.
    r.config_set("stream-node-max-bytes", 4096)
    try:
        with r.pipeline() as pipe:
            results.record(pipe, "00000000-0000-4000-8000-000000000001", outcome, ttl=60)
            pipe.execute()
        assert r.memory_usage(results.result_key("00000000-0000-4000-8000-000000000001")) > 2 * used
    finally:
        r.config_set("stream-node-max-bytes", embedded.STREAM_NODE_MAX_BYTES)
