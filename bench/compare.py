"""Two commits' bench figures side by side: ``python bench/compare.py --before REV [--after REV]``.

A change meant to leave behaviour and speed alone (a restructure, a dependency moved) is judged
by running the same benches on the code before it and after it, in turns on the same machine, and
printing both. This script exports each commit's tree with ``git archive`` into a scratch folder,
then runs each bench of :data:`BENCHES` in the two trees one after the other (the order swapped
from round to round, so a neighbour's burst does not always fall on the same side), with this
interpreter and its installed packages, and prints each run's table lines under its commit. The
benches' own references (plain RQ, a bare watchdog observer, a hello-world app, the handler
called directly) are measured in each run, so a figure is read beside its reference.

``--after`` defaults to the working tree this script is in (uncommitted changes included). At the
end, each figure line's medians over the rounds, the two trees line by line (``--summarize LOG``
prints them again from a saved output). Nothing is written into the docs.
"""

from __future__ import annotations

import argparse
import io
import os
import re
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BENCHES = {  # name -> its arguments: each run kept to a minute or two
    "files_latency": ["--files", "200"],
    "scale": ["--runs", "5"],
    "http": ["--seconds", "3", "--rounds", "2", "--no-write"],
    "sqlite_feed": [],
    "limits": ["--runs", "10"],
}


def export(rev: str, into: Path) -> Path:
    """The tree of commit ``rev`` written under ``into``."""
    data = subprocess.run(["git", "-C", str(ROOT), "archive", "--format=tar", rev], check=True,
                          capture_output=True).stdout
    into.mkdir(parents=True)
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        tar.extractall(into, filter="data")
    return into


def run(tree: Path, bench: str, args: list[str]) -> tuple[str, float, int]:
    """One bench in one tree: its output, seconds taken and exit status."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("LAMBDALITE_")}
    env.update(PATH=f"{Path(sys.executable).parent}:{env.get('PATH', '')}", PYTHONPATH=str(tree))
    started = time.monotonic()
    done = subprocess.run([sys.executable, str(tree / "bench" / f"{bench}.py"), *args], cwd=tree, env=env,
                          capture_output=True, text=True, timeout=1800)
    return done.stdout + done.stderr, time.monotonic() - started, done.returncode


UNITS = (" ms", " µs", " us", "/s", " x", " MB", "%")


def figures(output: str) -> list[str]:
    """The lines of a bench's output that carry its figures: its tables and its summary lines."""
    keep = []
    for line in output.splitlines():
        s = line.strip()
        table_row = s.startswith("|") and not set(s) <= set("|- ")
        summary = any(ch.isdigit() for ch in s) and any(u in s for u in UNITS) and len(s) < 200
        if table_row or summary:
            keep.append(s)
    return keep


NUMBER = re.compile(r"\d{1,3}(?:,\d{3})+(?:\.\d+)?|\d+(?:\.\d+)?")  # 1,234.5 or 1234.5, not "10," of a list
HEADER = re.compile(r"^=== (\S+) \(round (\d+)\) on (.+): \d+ s, exit 0$")


def median_line(lines: list[str]) -> str:
    """``lines`` (one figure's line in each round) as one line whose every number is the median of
    that number over the rounds, printed as the first round printed it."""
    texts = [NUMBER.split(line) for line in lines]
    numbers = [NUMBER.findall(line) for line in lines]
    if len({tuple(" ".join(part.split()) for part in t) for t in texts}) != 1:  # padding moves with widths
        return lines[0] + "   (the rounds' lines differ: the first round's)"
    out = texts[0][0]
    for i, text in enumerate(texts[0][1:]):
        first = numbers[0][i]
        value = statistics.median(float(n[i].replace(",", "")) for n in numbers)
        decimals = len(first.split(".")[1]) if "." in first else 0
        grouped = any("," in n[i] for n in numbers)  # 1,100 beside 900
        out += (f"{value:,.{decimals}f}" if grouped else f"{value:.{decimals}f}") + text
    return out


def summary(runs: dict[tuple[str, str], list[list[str]]], labels: list[str]) -> str:
    """Each bench's figure lines, medians over the rounds, ``labels``' trees one under the other."""
    out = []
    for bench in dict.fromkeys(b for b, _ in runs):
        rounds = {label: runs.get((bench, label), []) for label in labels}
        counts = {len(lines) for got in rounds.values() for lines in got}
        out.append(f"\n=== {bench}: medians of {min(len(g) for g in rounds.values())} round(s)")
        if len(counts) != 1:
            out.append("   (the runs printed different lines; read them above)")
            continue
        for i in range(counts.pop()):
            for label in labels:
                out.append(f"{label[:14]:>14}  {median_line([lines[i] for lines in rounds[label]])}")
    return "\n".join(out)


def summarize(log: Path) -> None:
    """Print :func:`summary` of an earlier run's saved output."""
    runs: dict[tuple[str, str], list[list[str]]] = {}
    current: list[str] | None = None
    labels: list[str] = []
    for line in log.read_text().splitlines():
        if m := HEADER.match(line):
            current = []
            runs.setdefault((m.group(1), m.group(3)), []).append(current)
            labels += [m.group(3)] if m.group(3) not in labels else []
        elif line.startswith("==="):
            current = None
        elif current is not None and line.strip():
            current.append(line)
    print(summary(runs, labels))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", help="the commit before the change (or a folder holding its tree)")
    parser.add_argument("--after", help="the commit after it (default: this working tree)")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--bench", action="append", choices=sorted(BENCHES), help="only these (repeatable)")
    parser.add_argument("--summarize", type=Path, help="no run: the medians of a run's saved output")
    args = parser.parse_args()
    if args.summarize:
        summarize(args.summarize)
        return
    if args.before is None:
        parser.error("--before is needed")
    scratch = Path(tempfile.mkdtemp(prefix="ll-compare-"))
    scratch.chmod(0o755)
    try:
        before = Path(args.before)
        trees = {args.before: before if before.is_dir() else export(args.before, scratch / "before")}
        trees[args.after or "working tree"] = export(args.after, scratch / "after") if args.after else ROOT
        labels = list(trees)
        runs: dict[tuple[str, str], list[list[str]]] = {}
        for r in range(args.rounds):
            for bench in args.bench or list(BENCHES):
                order = labels if r % 2 == 0 else labels[::-1]
                for label in order:
                    out, took, code = run(trees[label], bench, BENCHES[bench])
                    if code != 0:  # once more: a reference process that misses its stop fails a run
                        print(f"\n=== {bench} on {label} failed (exit {code}); once more:\n{out[-1500:]}", flush=True)
                        out, took, code = run(trees[label], bench, BENCHES[bench])
                    print(f"\n=== {bench} (round {r + 1}) on {label}: {took:.0f} s, exit {code}", flush=True)
                    print("\n".join(figures(out)) if code == 0 else out[-3000:], flush=True)
                    if code == 0:
                        runs.setdefault((bench, label), []).append(figures(out))
        print(summary(runs, labels))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
