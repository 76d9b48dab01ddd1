"""Two commits' bench figures side by side: ``python bench/compare.py --before REV [--after REV]``.

A change meant to leave behaviour and speed alone (a restructure, a dependency moved) is judged
by running the same benches on the code before it and after it, in turns on the same machine, and
printing both. This script exports each commit's tree with ``git archive`` into a scratch folder,
then runs each bench of :data:`BENCHES` in the two trees one after the other (the order swapped
from round to round, so a neighbour's burst does not always fall on the same side), with this
interpreter and its installed packages, and prints each run's table lines under its commit. The
benches' own references (plain RQ, a bare watchdog observer, a hello-world app, the handler
called directly) are measured in each run, so a figure is read beside its reference.

``--after`` defaults to the working tree this script is in (uncommitted changes included).
Nothing is written into the docs.
"""

from __future__ import annotations

import argparse
import io
import os
import shutil
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", required=True, help="the commit before the change (or a folder holding its tree)")
    parser.add_argument("--after", help="the commit after it (default: this working tree)")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--bench", action="append", choices=sorted(BENCHES), help="only these (repeatable)")
    args = parser.parse_args()
    scratch = Path(tempfile.mkdtemp(prefix="ll-compare-"))
    scratch.chmod(0o755)
    try:
        before = Path(args.before)
        trees = {args.before: before if before.is_dir() else export(args.before, scratch / "before")}
        trees[args.after or "working tree"] = export(args.after, scratch / "after") if args.after else ROOT
        labels = list(trees)
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
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
