"""How the console writes figures: one format per figure (the page's script uses the same ones),
and the overview's rows, written here rather than by the template (a row per function, 200 and
more: the template engine's per-cell cost would dominate the page's time)."""

from __future__ import annotations

import time
from html import escape
from typing import Any


def ms(v: Any) -> str:
    if v is None:
        return "-"
    return f"{v:,.0f} ms" if v >= 10 else f"{v:.1f} ms"


def usd(v: Any) -> str:
    if v is None:
        return "-"
    return f"${v:.6f}" if v < 1 else f"${v:,.2f}"


def pct(v: Any) -> str:
    return "-" if v is None else f"{v:.1f} %"


def age(v: Any) -> str:
    if v is None:
        return "-"
    return f"{v:.1f} s" if v < 120 else f"{v / 60:.0f} min"


def count(v: Any) -> str:
    return "-" if v is None else f"{v:,}"


def text(v: Any) -> str:
    return "-" if v is None else escape(str(v))


def when(v: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(v))


def overview_rows(functions: dict[str, dict[str, Any]]) -> str:
    """The overview table's body: a row per function, each figure in an element whose ``data-k``
    names it (the page's script fills them from the pushed figures, with the same formats)."""
    out = []
    for name, r in functions.items():
        q = escape(name)
        w, c = r["worker_states"], r["cost_usd"]
        out.append(
            f'<tr data-function="{q}"><th><a href="/console/functions/{q}">{q}</a></th>'
            f'<td><span data-k="invocations_minute">{r["invocations_minute"]:,}</span></td>'
            f'<td><span data-k="errors_minute">{r["errors_minute"]:,}</span></td>'
            f'<td><span data-k="success_rate">{pct(r["success_rate"])}</span></td>'
            f'<td><span data-k="p50_ms">{ms(r["p50_ms"])}</span></td>'
            f'<td><span data-k="p99_ms">{ms(r["p99_ms"])}</span></td>'
            f'<td><span data-k="max_ms">{ms(r["max_ms"])}</span></td>'
            f'<td><span data-k="running">{r["running"]:,}</span>/<span data-k="cap">{r["cap"]:,}</span></td>'
            f'<td><span data-k="worker_states.starting">{w["starting"]:,}</span>/'
            f'<span data-k="worker_states.idle">{w["idle"]:,}</span>/'
            f'<span data-k="worker_states.busy">{w["busy"]:,}</span></td>'
            f'<td><span data-k="queued">{r["queued"]:,}</span></td>'
            f'<td><span data-k="oldest_age_s">{age(r["oldest_age_s"])}</span></td>'
            f'<td><a href="/console/functions/{q}/dead-letters" data-k="dead_letters">{r["dead_letters"]:,}</a></td>'
            f'<td><span data-k="succeeded">{r["succeeded"]:,}</span></td>'
            f'<td><span data-k="failed">{r["failed"]:,}</span></td>'
            f'<td><span data-k="dead">{r["dead"]:,}</span></td>'
            f'<td><span data-k="next_tick">{text(r["next_tick"])}</span></td>'
            f'<td><span data-k="cost_usd.x86_64">{usd(c["x86_64"])}</span>/'
            f'<span data-k="cost_usd.arm64">{usd(c["arm64"])}</span></td></tr>')
    return "\n".join(out)
