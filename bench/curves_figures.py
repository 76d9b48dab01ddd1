"""bench/curves.py's figures: a curve per measured figure, an axis of them, its table and its plot."""

from __future__ import annotations

import math
import os
import statistics
from dataclasses import dataclass, field
from pathlib import Path

from report import table

CORES = os.cpu_count() or 1
UNITS = {"functions": "function", "objects": "object", "backlog": "queued event", "concurrency": "invocation"}


@dataclass
class Curve:
    """One measured figure at each size of an axis."""

    name: str
    unit: str  # of the figure: "s", "ms", "MB", "B", "%", "events/s"
    goal: str = ""
    per: bool = False  # a total, also shown per unit of work (a figure that is one already is not)
    points: dict[int, float] = field(default_factory=dict)

    def exponent(self) -> float | None:
        """Least-squares slope of log(value) against log(size); None where a value is not positive."""
        pts = [(math.log(n), math.log(v)) for n, v in sorted(self.points.items()) if v > 0]
        if len(pts) < 2 or len(pts) != len(self.points):
            return None
        mx, my = statistics.fmean(x for x, _ in pts), statistics.fmean(y for _, y in pts)
        var = sum((x - mx) ** 2 for x, _ in pts)
        return sum((x - mx) * (y - my) for x, y in pts) / var if var else None


@dataclass
class Axis:
    name: str
    curves: dict[str, Curve] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def put(self, size: int, name: str, value: float, unit: str, goal: str = "", per: bool = False) -> None:
        curve = self.curves.setdefault(name, Curve(name, unit, goal, per))
        curve.points[size] = value
        print(f"  {self.name} {size:>9,}: {name} = {_fmt(value)} {unit}", flush=True)


def _fmt(value: float) -> str:
    return f"{value:,.0f}" if abs(value) >= 100 else f"{value:.3g}"


def render(axis: Axis, sizes: list[int]) -> str:
    header = ["figure", *[f"{n:,}" for n in sizes], f"per {UNITS[axis.name]}, smallest -> largest", "exponent",
              "goal"]
    rows = []
    for c in axis.curves.values():
        per = [c.points[n] / n for n in (sizes[0], sizes[-1]) if n in c.points] if c.per else []
        exp = c.exponent()
        rows.append([f"{c.name} ({c.unit})", *[_fmt(c.points[n]) if n in c.points else "" for n in sizes],
                     " -> ".join(f"{p:.3g}" for p in per), "" if exp is None else f"{exp:.2f}", c.goal])
    text = table(header, rows)
    if axis.notes:
        text += "\n\n" + "\n".join(f"- {note}" for note in axis.notes)
    return text


def plot(axis: Axis, folder: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    curves = list(axis.curves.values())
    cols = 3
    rows = math.ceil(len(curves) / cols)
    fig, grid = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.2 * rows), squeeze=False)
    for ax, c in zip(grid.flat, curves, strict=False):
        xs = sorted(c.points)
        ys = [c.points[x] for x in xs]
        ax.plot(xs, ys, marker="o")
        ax.set_xscale("log")
        if all(y > 0 for y in ys):
            ax.set_yscale("log")
        exp = c.exponent()
        ax.set_title(f"{c.name}\n(exponent {exp:.2f})" if exp is not None else c.name, fontsize=8)
        ax.set_xlabel(UNITS[axis.name] + "s", fontsize=8)
        ax.set_ylabel(c.unit, fontsize=8)
        ax.tick_params(labelsize=7)
    for ax in list(grid.flat)[len(curves):]:
        ax.axis("off")
    fig.suptitle(f"lambdalite: cost as the {axis.name} grow ({CORES} cores)", fontsize=10)
    fig.tight_layout()
    path = folder / f"curves-{axis.name}.png"
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path
