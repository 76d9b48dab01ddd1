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


def _pick(row: dict[str, Any], key: str) -> Any:
    for part in key.split("."):
        row = row.get(part) if isinstance(row, dict) else None  # type: ignore[assignment]
    return row


# The overview's columns: the figure (a key of the row, dotted for a nested one) and its format;
# a tuple of them shares one cell.
COLUMNS: list[tuple[tuple[str, Any], ...]] = [
    (("invocations_minute", count),), (("errors_minute", count),), (("success_rate", pct),),
    (("p50_ms", ms),), (("p99_ms", ms),), (("max_ms", ms),), (("running", count), ("cap", count)),
    (("worker_states.starting", count), ("worker_states.idle", count), ("worker_states.busy", count)),
    (("queued", count),), (("oldest_age_s", age),), (("dead_letters", count),), (("succeeded", count),),
    (("failed", count),), (("dead", count),), (("next_tick", text),),
    (("cost_usd.x86_64", usd), ("cost_usd.arm64", usd)),
]


def overview_rows(functions: dict[str, dict[str, Any]]) -> str:
    """The overview table's body: a row per function, each figure in an element whose ``data-k``
    names it (the page's script fills them from the pushed figures)."""
    out = []
    for name, row in functions.items():
        quoted = escape(name)
        cells = [f'<tr data-function="{quoted}"><th><a href="/console/functions/{quoted}">{quoted}</a></th>']
        for column in COLUMNS:
            parts = []
            for key, show in column:
                value = show(_pick(row, key))
                if key == "dead_letters":
                    parts.append(f'<a href="/console/functions/{quoted}/dead-letters" data-k="{key}">{value}</a>')
                else:
                    parts.append(f'<span data-k="{key}">{value}</span>')
            cells.append("<td>" + "/".join(parts) + "</td>")
        out.append("".join(cells) + "</tr>")
    return "\n".join(out)
