"""The soak bench's figures: its samples, each series fitted against the events handled, the verdicts,
the report and the plot (``bench/soak.py`` runs the stack and takes the samples)."""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from report import table

# The families that hold a copy of each event for a lifetime: their count is the load's rate times it.
PER_EVENT = ("lambdalite:result:<id>", "rq:job:<id>", "rq:results:<id>")


@dataclass
class Sample:
    at: float  # seconds since the load began
    events: int  # handler runs finished (succeeded + failed counters)
    used_memory: int
    families: dict[str, int]
    processes: dict[int, dict[str, Any]]  # pid -> kind, rss, pss, fds, threads
    log_bytes: int
    largest: dict[str, int] = field(default_factory=dict)  # capped family -> members of its largest key
    capped_bytes: int = 0  # MEMORY USAGE of the capped families' keys
    smallest: dict[str, int] = field(default_factory=dict)  # capped family -> members of its smallest key
    memory: dict[str, int] = field(default_factory=dict)  # Redis's INFO memory: where its RSS goes (MEMORY_FIELDS)



@dataclass
class Series:
    name: str
    group: str  # redis, families, rss, pss, fds, threads, log
    points: list[tuple[float, float, float]]  # (seconds, events, value)
    goal: float | None = None  # most growth per 100,000 events, % of the mean, when there is a goal

    def window(self, warmup: float) -> list[tuple[float, float, float]]:
        return [p for p in self.points if p[0] >= warmup]

    def growth(self, warmup: float) -> tuple[float, float] | None:
        """(growth per 100,000 events, mean) after ``warmup`` by least squares; None without two points."""
        pts = self.window(warmup)
        if len(pts) < 2:
            return None
        xs = [p[1] for p in pts]
        ys = [p[2] for p in pts]
        mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
        var = sum((x - mx) ** 2 for x in xs)
        if var == 0:
            return None
        slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / var
        return slope * 100_000, my

    def keeps_growing(self, warmup: float) -> str | None:
        """Why the series keeps growing after ``warmup`` (its last third well above its first), or None."""
        pts = self.window(warmup)
        if len(pts) < 6:
            return None
        third = len(pts) // 3
        first = sum(p[2] for p in pts[:third]) / third
        last = sum(p[2] for p in pts[-third:]) / third
        slack = {"families": (0.25, 50), "rss": (0.10, 3 * 2**20), "pss": (0.10, 3 * 2**20), "fds": (0.0, 8),
                 "threads": (0.0, 4), "redis": (0.10, 2 * 2**20)}.get(self.group)
        if slack is None:
            return None
        share, absolute = slack
        if last - first > max(share * first, absolute):
            return f"{self.name}: {_fmt(self.group, first)} -> {_fmt(self.group, last)} (first and last third)"
        return None


def _fmt(group: str, value: float) -> str:
    if group == "per-key":
        return f"{value:,.0f} B"
    if group in ("rss", "pss", "redis", "redis-info", "log"):
        return f"{value / 2**20:.1f} MB"
    return f"{value:.0f}"


def build_series(samples: list[Sample], warmup: float) -> list[Series]:
    series: dict[str, Series] = {}

    def add(name: str, group: str, s: Sample, value: float, goal: float | None = None) -> None:
        if name not in series:
            series[name] = Series(name, group, [], goal)
        series[name].points.append((s.at, s.events, value))

    names = sorted({n for s in samples for n in s.families})
    end = samples[-1].at if samples else 0.0
    # Processes that lived through the measured window (workers and sandboxes come and go).
    lived: dict[int, list[float]] = defaultdict(list)
    for s in samples:
        for pid in s.processes:
            lived[pid].append(s.at)
    kept = {pid for pid, ats in lived.items()
            if min(ats) <= warmup + 0.1 * (end - warmup) and max(ats) >= end - 0.1 * (end - warmup)}
    labels: dict[int, str] = {}
    for s in samples:
        add("Redis used_memory", "redis", s, s.used_memory, goal=1.0)
        if any(x.capped_bytes for x in samples):
            add("Redis used_memory less the stores capped by a count", "redis", s, s.used_memory - s.capped_bytes)
        for name, value in sorted(s.memory.items()):
            # with the C library's malloc Redis works some of these out as unsigned differences, which
            # wrap round when the RSS is read below what Redis counts: read back as the negative they are
            add(f"Redis {name}", "redis-info", s, value - 2**64 if value >= 2**63 else value)
        held = sum(s.families.get(name, 0) for name in PER_EVENT)
        if held:  # what the families that hold a copy per event cannot explain: their count follows the rate
            add("Redis used_memory per key held per event", "per-key", s, s.used_memory / held)
        for n in names:
            add(n, "families", s, s.families.get(n, 0))
        for pid, p in sorted(s.processes.items()):
            if pid not in kept:
                continue
            label = labels.setdefault(pid, f"{p['kind']} ({pid})")
            add(f"RSS {label}", "rss", s, p["rss"], goal=1.0)
            add(f"PSS {label}", "pss", s, p["pss"])
            add(f"fds {label}", "fds", s, p["fds"])
            add(f"threads {label}", "threads", s, p["threads"])
        add("processes of the stack", "count", s, len(s.processes))
        add("log size", "log", s, s.log_bytes)
    return list(series.values())


def verdicts(series: list[Series], samples: list[Sample], capped: dict[str, int],
             warmup: float) -> tuple[list[str], list[str]]:
    """(what keeps growing, notes on what was let pass and why).

    A store bounded by a count may still be filling up after warm-up (at a low rate, a short run):
    such a ramp is legitimate while its keys stay within their cap. So a capped family fails when a
    key of it passes its cap by half, and otherwise is judged only from the sample at which its
    smallest key had reached its cap (eight tenths of it: trimming cuts below it): a family still
    filling is noted, one that reached its cap and goes on growing fails like any other."""
    growing: list[str] = []
    notes: list[str] = []
    for s in series:
        if s.name in capped:
            cap = capped[s.name]
            most = max((x.largest.get(s.name, 0) for x in samples), default=0)
            if most > 1.5 * cap:
                growing.append(f"{s.name}: a key of {most:,} members, past its cap of {cap:,}")
                continue
            reached = next((x.at for x in samples if (x.smallest or x.largest).get(s.name, 0) >= 0.8 * cap), None)
            if reached is None:
                notes.append(f"filling up to its cap (largest key {most:,} of {cap:,} members): {s.name}")
                continue
            why = s.keeps_growing(max(warmup, reached))
        else:
            why = s.keeps_growing(warmup)
            if why is not None and s.name == "Redis used_memory" and any(x.capped_bytes for x in samples):
                notes.append(f"including the capped stores: {why}")  # judged without them, on its own series
                continue
        if why is not None:
            growing.append(why)
    return growing, notes


def _kind_of(name: str) -> str:
    """``RSS worker (123)`` -> ``worker``."""
    return name.split(" ", 1)[1].rsplit(" (", 1)[0]


def report(series: list[Series], warmup: float, samples: list[Sample], load: Any, duration: float) -> tuple[str, bool]:
    """The Markdown figures, and whether every goal was met: Redis's memory and its key families, then the
    processes by kind (several workers and sandboxes: the one that grew most)."""
    met = True
    fits = {s.name: s.growth(warmup) for s in series}

    def rel(s: Series) -> float:
        fit = fits[s.name]
        return 100 * fit[0] / fit[1] if fit and fit[1] else 0.0

    redis_rows = []
    for s in series:
        fit = fits[s.name]
        if s.group not in ("redis", "redis-info", "per-key", "families", "log", "count") or fit is None:
            continue
        per, mean = fit
        if s.group == "families" and mean == 0 and per == 0:
            continue
        verdict = "-"
        if s.goal is not None:
            met &= rel(s) < s.goal
            verdict = "met" if rel(s) < s.goal else "MISSED"
        growth = f"{per:+,.0f}" if s.group in ("families", "count") else ("+" if per >= 0 else "") + _fmt(s.group, per)
        redis_rows.append([s.name, _fmt(s.group, mean), growth, f"{rel(s):+.2f} %", verdict])
    by_kind: dict[str, dict[str, list[Series]]] = defaultdict(lambda: defaultdict(list))
    for s in series:
        if s.group in ("rss", "pss", "fds", "threads") and fits[s.name] is not None:
            by_kind[_kind_of(s.name)][s.group].append(s)
    proc_rows = []
    for kind, groups in sorted(by_kind.items()):
        rss = max(groups["rss"], key=rel)
        ok = all(rel(s) < 1.0 for s in groups["rss"])
        met &= ok
        worst = {g: max(groups[g], key=lambda s: fits[s.name][0]) for g in ("pss", "fds", "threads")}  # type: ignore[index]
        proc_rows.append([
            kind, str(len(groups["rss"])), _fmt("rss", fits[rss.name][1]),  # type: ignore[index]
            ("+" if fits[rss.name][0] >= 0 else "") + _fmt("rss", fits[rss.name][0]) + f" ({rel(rss):+.2f} %)",  # type: ignore[index]
            _fmt("pss", fits[worst["pss"].name][1]) + f" ({rel(worst['pss']):+.2f} %)",  # type: ignore[index]
            f"{fits[worst['fds'].name][1]:.0f} ({fits[worst['fds'].name][0]:+.1f})",  # type: ignore[index]
            f"{fits[worst['threads'].name][1]:.0f} ({fits[worst['threads'].name][0]:+.1f})",  # type: ignore[index]
            "met" if ok else "MISSED"])
    first = next((x for x in samples if x.at >= warmup), samples[0])
    last = samples[-1]
    handled = last.events - first.events
    text = (f"{duration / 60:.0f} min of load ({warmup / 60:.0f} min warm-up), {last.events:,} handler runs in all, "
            f"{handled:,} after warm-up ({handled / max(1.0, last.at - first.at):.0f}/s). Sent: "
            + ", ".join(f"{k} {v:,}" for k, v in sorted(load.sent.items()))
            + (". Load errors: " + ", ".join(f"{k} {v} ({load.last_error.get(k, '')})"
                                               for k, v in sorted(load.errors.items())) if load.errors else "")
            + ".\n\nGrowth is the least-squares slope of each series against the handler runs finished, after "
              "warm-up, per 100,000 runs.\n\n")
    text += table(["Redis", "mean after warm-up", "growth per 100,000 events", "of the mean", "goal < 1 %"],
                  redis_rows)
    text += "\n\n" + table(["process", "count", "RSS mean", "RSS growth per 100,000 events (largest)",
                             "PSS mean (growth)", "fds (growth)", "threads (growth)", "goal < 1 %"], proc_rows)
    text += ("\n\nGoal: after warm-up, Redis's memory and every process's RSS grow less than 1 % per 100,000 "
             f"events: **{'met' if met else 'missed'}**.")
    return text, met


def plot(series: list[Series], warmup: float, path: Path) -> None:
    """One panel per kind of series; the processes' lines coloured by kind (one legend entry each), and
    redis-server's RSS beside Redis's own count of its memory rather than above lambdalite's processes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def is_redis(s: Series) -> bool:
        return s.group in ("rss", "pss") and _kind_of(s.name) == "redis-server"

    panels = [("Redis: used_memory, INFO memory and redis-server's RSS (MB)",
               lambda s: s.group == "redis" or s.name in ("Redis used_memory_rss", "Redis mem_fragmentation_bytes")
               or (is_redis(s) and s.group == "rss")),
              ("keys (members) per family, the 14 largest", lambda s: s.group == "families"),
              ("RSS of lambdalite's processes (MB)", lambda s: s.group == "rss" and not is_redis(s)),
              ("PSS of lambdalite's processes (MB)", lambda s: s.group == "pss" and not is_redis(s)),
              ("open descriptors", lambda s: s.group == "fds"), ("threads", lambda s: s.group == "threads"),
              ("the stack's log (MB)", lambda s: s.group == "log"), ("processes", lambda s: s.group == "count")]
    kinds = sorted({_kind_of(s.name) for s in series if s.group in ("rss", "pss", "fds", "threads")})
    colours = {kind: plt.get_cmap("tab10")(i % 10) for i, kind in enumerate(kinds)}
    fig, axes = plt.subplots(4, 2, figsize=(16, 18))
    for ax, (title, chosen) in zip(axes.flat, panels, strict=True):
        members = [s for s in series if chosen(s)]
        if "family" in title:
            members = sorted(members, key=lambda s: -max(p[2] for p in s.points))[:14]
        labelled: set[str] = set()
        for s in members:
            scale = 2**20 if s.group in ("redis", "redis-info", "rss", "pss", "log") else 1
            style: dict[str, Any] = {"linewidth": 1, "label": s.name}
            if s.group in ("rss", "pss", "fds", "threads"):
                kind = _kind_of(s.name)
                style.update(color=colours[kind], label=None if kind in labelled else kind)
                labelled.add(kind)
            ax.plot([p[0] / 60 for p in s.points], [p[2] / scale for p in s.points], **style)
        ax.axvspan(0, warmup / 60, color="0.9")
        ax.set_title(title)
        ax.set_xlabel("minutes (grey: warm-up)")
        if "family" in title:
            ax.set_yscale("symlog")
        if members:
            ax.legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=80)
    plt.close(fig)


def read_samples(path: Path) -> list[Sample]:
    samples = []
    for line in path.read_text().splitlines():
        record = json.loads(line)
        if "at" in record:
            record["processes"] = {int(pid): p for pid, p in record["processes"].items()}
            samples.append(Sample(**record))
    return samples
