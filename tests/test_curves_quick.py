"""bench/curves.py in its quick mode: every axis runs through the real stack and prints its table and
plot (what it measures is the bench's business; here only that it measures it)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

FIGURES = {
    "functions": ["start-up: launch -> scaler's first step and HTTP up", "scaler CPU, idle",
                  "`lambdalite status --json`", "PSS of scaler", "PSS of files",
                  "scaler CPU, every function with work"],
    "objects": ["launch -> new file queued", "manifest in Redis per object", "files RSS after the scan"],
    "backlog": ["Redis per queued event", "drain rate, this backlog", "drain rate, this backlog / reference's",
                "worker and sandbox CPU per drained event"],
    "concurrency": ["queued -> running, cold, median", "queued -> running, warm, median",
                    "PSS per warm idle worker beyond the first", "scaler CPU per step, all idle",
                    "worker and sandbox CPU per warm invocation"],
}


@pytest.mark.timeout(900)
def test_the_quick_curves_print_a_table_and_a_plot_for_every_axis(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LAMBDALITE_")}
    done = subprocess.run([sys.executable, str(ROOT / "bench" / "curves.py"), "--quick", "--plots", str(tmp_path)],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=880)
    assert done.returncode == 0, done.stdout[-6000:] + done.stderr[-3000:]
    out = done.stdout
    for axis, figures in FIGURES.items():
        section = out.split(f"## {axis}\n", 1)[1].split("\n## ", 1)[0]
        header = section.strip().splitlines()[0]
        assert re.match(r"\| figure \| [\d,]+ \| [\d,]+ \| [\d,]+ \|", header), header  # three sizes
        for figure in figures:
            row = next((line for line in section.splitlines() if line.startswith(f"| {figure}")), None)
            assert row is not None, (axis, figure, section)
            cells = [c.strip() for c in row.strip("|").split("|")]
            assert all(re.fullmatch(r"-?[\d,.e+-]+", c) for c in cells[1:4]), row  # a number at each size
        assert (tmp_path / f"curves-{axis}.png").stat().st_size > 10_000
