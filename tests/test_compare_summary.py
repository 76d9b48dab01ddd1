"""bench/compare.py's summary: each figure line's medians over the rounds, the trees line by line,
read back from a saved run (``--summarize LOG``) as a person would run it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

LOG = """
=== scale (round 1) on before: 100 s, exit 0
burst, 30 x 1 s, max_concurrency 10, from zero: drained in 3.20 s = 1.07 x ideal
sync round trips    1,200 req/s   p50    9.0 ms
=== scale (round 1) on after: 100 s, exit 0
burst, 30 x 1 s, max_concurrency 10, from zero: drained in 3.10 s = 1.03 x ideal
sync round trips      900 req/s   p50   12.0 ms
=== scale (round 2) on after: 100 s, exit 0
burst, 30 x 1 s, max_concurrency 10, from zero: drained in 3.30 s = 1.10 x ideal
sync round trips    1,100 req/s   p50   10.0 ms
=== scale (round 2) on before: 100 s, exit 0
burst, 30 x 1 s, max_concurrency 10, from zero: drained in 3.40 s = 1.13 x ideal
sync round trips    1,000 req/s   p50   11.0 ms
=== limits on after failed (exit 1); once more:
Traceback: not a figure
"""


def test_medians_of_each_figure_side_by_side(tmp_path: Path) -> None:
    (tmp_path / "run.log").write_text(LOG)
    command = [sys.executable, str(ROOT / "bench" / "compare.py"), "--summarize", str(tmp_path / "run.log")]
    done = subprocess.run(command, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.strip().splitlines()
    assert lines[0] == "=== scale: medians of 2 round(s)"
    assert lines[1].split() == ["before", "burst,", "30", "x", "1", "s,", "max_concurrency", "10,", "from", "zero:",
                                "drained", "in", "3.30", "s", "=", "1.10", "x", "ideal"]
    assert lines[2].split()[-6:] == ["3.20", "s", "=", "1.06", "x", "ideal"]  # after: medians of 3.10/3.30, 1.03/1.10
    assert lines[3].split() == ["before", "sync", "round", "trips", "1,100", "req/s", "p50", "10.0", "ms"]
    assert lines[4].split() == ["after", "sync", "round", "trips", "1,000", "req/s", "p50", "11.0", "ms"]
    assert len(lines) == 5, "a failed run's output is no figure"
