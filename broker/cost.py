"""What each function's invocations would cost on AWS Lambda: requests, GB-seconds, dollars.

Lambda bills each request, and each invocation's configured memory times its billed duration: the
duration rounded up to the millisecond, with the INIT phase (a cold start's set-up) included, as
Lambda bills it since August 2025. The worker counts both per function in one hash of fixed
fields (``lambdalite:cost:<function>``), queued in the transaction that records the invocation's
outcome; :func:`usage` reads them and :func:`price` turns them into dollars with the list prices of
:mod:`broker.prices`.
"""

from __future__ import annotations

import logging
import math
import re
from dataclasses import dataclass
from typing import Any

import redis

from broker import prices, quarantine, scripts

log = logging.getLogger(__name__)

FIELDS = ("requests", "billed_ms", "mb_ms", "inits", "init_ms")


def cost_key(function: str) -> str:
    return f"lambdalite:cost:{function}"


def billed_ms(duration_ms: float, init_ms: float | None = None) -> int:
    """Lambda's billed duration: run time plus INIT time, rounded up to the millisecond.

    Rounded to the microsecond first, so that 2.0000000001 ms of float arithmetic bills 2 ms.
    """
    return math.ceil(round(duration_ms + (init_ms or 0.0), 3))


_RECORD = scripts.load("cost_record")  # broker/lua/cost_record.lua


def record(pipe: Any, function: str, memory_mb: int, billed: int, init_ms: float | None) -> None:
    """Queue on ``pipe`` the counting of one invocation: ``billed`` ms (see :func:`billed_ms`) at
    ``memory_mb``, and a cold start when ``init_ms`` is given."""
    cold = init_ms is not None
    key, at = cost_key(function), quarantine.stamp()
    _RECORD.queue(pipe, keys={"cost": key, "cost_aside": quarantine.aside(key, at)},
                  args={**quarantine.move_args(), "requests": 1, "billed_ms": billed, "mb_ms": memory_mb * billed,
                        "inits": int(cold), "init_ms": math.ceil(init_ms or 0.0)})


@dataclass(frozen=True, slots=True)
class Usage:
    """A function's billable use, summed."""

    requests: int = 0
    billed_ms: int = 0
    mb_ms: int = 0  # configured MB times billed ms, summed: exact, whatever the memory was each time
    inits: int = 0  # cold starts
    init_ms: int = 0  # their INIT time (each rounded up to the ms), part of billed_ms

    @property
    def gb_seconds(self) -> float:
        return self.mb_ms / 1024 / 1000

    def __add__(self, other: Usage) -> Usage:
        return Usage(*(getattr(self, f) + getattr(other, f) for f in FIELDS))


def usage(client: redis.Redis, functions: list[str]) -> dict[str, Usage]:
    """Each function's :class:`Usage` (zero for one with no invocation yet). A key of another type or
    a field that is not a count is logged (one line naming it) and counted as 0."""
    replies = quarantine.hmget_each(client, [cost_key(name) for name in functions], FIELDS)
    out = {}
    for name, reply in zip(functions, replies, strict=True):
        if reply is None:
            log.warning("%s; counted as 0", quarantine.describe(client, cost_key(name), "hash"))
            reply = [None] * len(FIELDS)
        out[name] = Usage(*(_count(name, f, v) for f, v in zip(FIELDS, reply, strict=True)))
    return out


def _count(function: str, field: str, raw: bytes | None) -> int:
    if raw is None:
        return 0
    if raw.isdigit():
        return int(raw)
    log.warning("redis key %s has field '%s' = %r, not a count; counted as 0", cost_key(function), field,
                raw.decode(errors="replace")[:40])
    return 0


def price(use: Usage) -> dict[str, Any]:
    """What ``use`` costs at list price, per architecture, without the free tier; and, apart, what
    one month's free tier would leave to pay (it is per account and month, not per function)."""
    requests_usd = use.requests / 1_000_000 * prices.USD_PER_MILLION_REQUESTS
    paid_requests = max(0, use.requests - prices.FREE_REQUESTS_PER_MONTH)
    paid_gbs = max(0.0, use.gb_seconds - prices.FREE_GB_SECONDS_PER_MONTH)
    out: dict[str, Any] = {
        "requests": use.requests, "billed_ms": use.billed_ms, "mb_ms": use.mb_ms,
        "gb_seconds": use.gb_seconds, "cold_starts": use.inits,
        "init_ms": use.init_ms, "requests_usd": requests_usd,
        "usd": {}, "usd_after_free_tier": {},
    }
    for arch, per_gbs in prices.USD_PER_GB_SECOND.items():
        out["usd"][arch] = requests_usd + use.gb_seconds * per_gbs
        out["usd_after_free_tier"][arch] = (paid_requests / 1_000_000 * prices.USD_PER_MILLION_REQUESTS
                                            + paid_gbs * per_gbs)
    return out


def price_table() -> dict[str, Any]:
    """The prices used, as ``status --cost --json`` shows them."""
    return {"as_of": prices.AS_OF.isoformat(), "region": prices.REGION,
            "usd_per_million_requests": prices.USD_PER_MILLION_REQUESTS,
            "usd_per_gb_second": dict(prices.USD_PER_GB_SECOND),
            "free_tier_per_month": {"requests": prices.FREE_REQUESTS_PER_MONTH,
                                    "gb_seconds": prices.FREE_GB_SECONDS_PER_MONTH}}


_REPORT = re.compile(r"Billed Duration: (\d+) ms\tMemory Size: (\d+) MB(?:\t.*?Init Duration: ([\d.]+) ms)?")


def from_report(line: str) -> Usage:
    """The :class:`Usage` of one REPORT line (as the worker writes it: Lambda's format)."""
    match = _REPORT.search(line)
    if not match or not line.startswith("REPORT RequestId: "):
        raise ValueError(f"not a REPORT line: {line[:120]!r}")
    billed, memory = int(match.group(1)), int(match.group(2))
    init = match.group(3)
    return Usage(requests=1, billed_ms=billed, mb_ms=billed * memory, inits=int(init is not None),
                 init_ms=math.ceil(float(init)) if init is not None else 0)


def table(priced: dict[str, dict[str, Any]]) -> str:
    """``status --cost`` as a table: one row a function and a total, the free tier in a line apart."""
    head = ["function", "requests", "cold starts", "billed ms", "GB-s", "x86 $", "arm $"]
    rows = [head]
    for name, row in [*priced.items(), ("total", None)]:
        row = row or _total(priced)
        rows.append([name, f"{row['requests']:,}", f"{row['cold_starts']:,}", f"{row['billed_ms']:,}",
                     f"{row['gb_seconds']:,.3f}", f"{row['usd']['x86_64']:.6f}", f"{row['usd']['arm64']:.6f}"])
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    lines = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True)))
             for r in rows]
    free = _total(priced)["usd_after_free_tier"]
    lines.append(f"Lambda list prices, {prices.REGION}, as of {prices.AS_OF.isoformat()}: "
                 f"${prices.USD_PER_MILLION_REQUESTS:.2f} per million requests, "
                 + ", ".join(f"${p:.10f} per GB-s {a}" for a, p in prices.USD_PER_GB_SECOND.items())
                 + "; billed duration includes INIT.")
    lines.append(f"Free tier (per account and month, not included above): {prices.FREE_REQUESTS_PER_MONTH:,} "
                 f"requests and {prices.FREE_GB_SECONDS_PER_MONTH:,} GB-s; the total within one month of it: "
                 f"x86 ${free['x86_64']:.6f}, arm ${free['arm64']:.6f}.")
    return "\n".join(lines)


def _total(priced: dict[str, dict[str, Any]]) -> dict[str, Any]:
    total = Usage()
    for row in priced.values():
        total += Usage(row["requests"], row["billed_ms"], row["mb_ms"], row["cold_starts"], row["init_ms"])
    return price(total)
