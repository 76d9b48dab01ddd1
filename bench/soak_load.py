"""What the soak bench sends: its handlers, its lambdalite.toml and the load threads (the Invoke API
synchronous and asynchronous, a webhook, files dropped in a bucket and deleted again, rows written
to a SQLite table in batches, an idempotent function that gets each order twice, and a function whose
planned failures are retried and dead-lettered)."""

from __future__ import annotations

import contextlib
import http.client
import json
import sqlite3
import threading
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# Events per second each load thread sends (about 75 handler runs a second in all, with retries).
RATES = {"invoke-sync": 12.0, "invoke-async": 12.0, "flaky": 5.0, "pay": 5.0, "webhook": 10.0,
         "files": 8.0, "rows": 40.0}
FAIL_SHARE = 0.2  # of the flaky function's events: each is tried three times, then dead-lettered
ROWS_PER_COMMIT = 8
KEEP_FILES = 20.0  # seconds a dropped file stays in its bucket before the load deletes it

HANDLERS = '''"""Soak handlers: small, and each a kind of work a real stack sees."""

from broker.handler_api.idempotency import idempotent


def echo(event, context):
    return {{"ok": True}}


def flaky(event, context):
    if event.get("fail"):
        raise RuntimeError("planned failure")
    return {{"ok": True}}


@idempotent(key="order_id", expires_after_seconds={idempotency_ttl})
def pay(event, context):
    return {{"order": event["order_id"], "by": context.aws_request_id}}


def rows(event, context):
    return {{"records": len(event["Records"])}}


def hook(event, context):
    return {{"statusCode": 200, "body": "ok"}}
'''

CONFIG = '''
[functions.api]
handler = "soakfns.echo"
timeout = 10

[functions.flaky]
handler = "soakfns.flaky"
retries = 2
retry_backoff = 0.2

[functions.pay]
handler = "soakfns.pay"

[functions.files]
handler = "soakfns.echo"

[[functions.files.triggers]]
source = "files"
bucket = "drop"
events = ["s3:ObjectCreated:*"]

[functions.rows]
handler = "soakfns.rows"

[[functions.rows.triggers]]
source = "sqlite"
database = "app.db"
table = "items"
batch_size = 20

[functions.hook]
handler = "soakfns.hook"

[[functions.hook.triggers]]
source = "http"
path = "/hook"
'''

# The lifetimes and caps of a run: the shipped defaults, but dead letters and the log store capped lower
# so that a run of an hour reaches those caps within its warm-up (the log store's 2,000 invocations per
# function take each function at most about 7 minutes at these rates); --short shortens everything so
# that a minute reaches every plateau.
@dataclass
class Load:
    """The load threads and what they sent."""

    folder: Path
    port: int
    stop: threading.Event = field(default_factory=threading.Event)
    sent: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    errors: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    last_error: dict[str, str] = field(default_factory=dict)
    threads: list[threading.Thread] = field(default_factory=list)

    def start(self) -> None:
        for name, rate in RATES.items():
            thread = threading.Thread(target=self._paced, args=(name, rate), name=f"load-{name}", daemon=True)
            thread.start()
            self.threads.append(thread)

    def join(self) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(30)

    def _paced(self, name: str, rate: float) -> None:
        send = getattr(self, "_" + name.replace("-", "_"))
        state: dict[str, Any] = {}
        every = 1.0 / rate
        due = time.monotonic()
        n = 0
        while not self.stop.is_set():
            try:
                send(state, n)
                self.sent[name] += 1
            except Exception as e:  # counted and shown; the load goes on
                self.errors[name] += 1
                self.last_error[name] = f"{type(e).__name__}: {e}"[:200]
                state.clear()  # a fresh connection next time
            n += 1
            due = max(due + every, time.monotonic() - 1.0)  # catch up at most a second's worth
            self.stop.wait(max(0.0, due - time.monotonic()))
        for value in state.values():
            with contextlib.suppress(Exception):
                value.close()

    # -- the sources -------------------------------------------------------------------------------

    def _http(self, state: dict[str, Any], path: str, body: Any, headers: dict[str, str] | None = None) -> bytes:
        conn = state.get("http")
        if conn is None:
            conn = state["http"] = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        conn.request("POST", path, body=json.dumps(body), headers={"Content-Type": "application/json",
                                                                  **(headers or {})})
        reply = conn.getresponse()
        data = reply.read()
        if reply.status >= 300:
            raise RuntimeError(f"POST {path}: HTTP {reply.status}: {data[:120]!r}")
        return data

    def _invoke(self, state: dict[str, Any], function: str, payload: Any, kind: str) -> bytes:
        return self._http(state, f"/2015-03-31/functions/{function}/invocations", payload,
                          {"X-Amz-Invocation-Type": kind})

    def _invoke_sync(self, state: dict[str, Any], n: int) -> None:
        self._invoke(state, "api", {"n": n}, "RequestResponse")

    def _invoke_async(self, state: dict[str, Any], n: int) -> None:
        self._invoke(state, "api", {"n": n}, "Event")

    def _flaky(self, state: dict[str, Any], n: int) -> None:
        self._invoke(state, "flaky", {"n": n, "fail": n % round(1 / FAIL_SHARE) == 0}, "Event")

    def _pay(self, state: dict[str, Any], n: int) -> None:
        self._invoke(state, "pay", {"order_id": f"order-{n // 2}", "amount": 1}, "Event")  # each order twice

    def _webhook(self, state: dict[str, Any], n: int) -> None:
        self._http(state, "/hook", {"n": n})

    def _files(self, state: dict[str, Any], n: int) -> None:
        bucket = self.folder / "buckets" / "drop"
        (bucket / f"f{n:09d}.txt").write_bytes(b"x" * (100 + n % 900))
        dropped = state.setdefault("dropped", [])
        dropped.append((time.monotonic(), bucket / f"f{n:09d}.txt"))
        while dropped and dropped[0][0] < time.monotonic() - KEEP_FILES:
            dropped.pop(0)[1].unlink(missing_ok=True)

    def _rows(self, state: dict[str, Any], n: int) -> None:
        if n % ROWS_PER_COMMIT:
            state.setdefault("rows", []).append((n % 5000, f"value {n}"))
            return
        conn = state.get("db")
        if conn is None:
            conn = state["db"] = sqlite3.connect(self.folder / "app.db", timeout=30)
        rows = state.pop("rows", []) + [(n % 5000, f"value {n}")]
        with conn:
            conn.executemany("INSERT OR REPLACE INTO items (id, value) VALUES (?, ?)", rows)
