"""The soak bench's short run: a minute of mixed load through every source on a whole stack (lifetimes
and caps shortened so that it reaches every plateau), failing if a key family or a process keeps
growing after warm-up (bench/soak.py --check)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.timeout(300)
def test_a_minute_of_mixed_load_leaves_no_family_and_no_process_growing(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LAMBDALITE_")}
    plot = tmp_path / "soak.png"
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "soak.py"), "--duration", "75", "--warmup", "35", "--every", "2.5",
         "--short", "--check", "--plot", str(plot)],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=280,
    )
    assert done.returncode == 0, done.stdout[-6000:] + done.stderr[-3000:]
    out = done.stdout
    assert "keeps growing" not in out
    # It measured what it says: every source handled events, and the one-key stores sat at their caps.
    for family in ("rq:finished:QUEUE", "rq:failed:QUEUE", "lambdalite:dlq:FUNCTION", "lambdalite:result:<id>",
                   "lambdalite:idempotency:<key>", "lambdalite:files:manifest:BUCKET"):
        assert f"| {family} |" in out, family
    for kind in ("redis-server", "scaler", "worker", "sandbox", "files", "sqlite", "webhook"):
        assert f"| {kind} |" in out, kind
    assert plot.stat().st_size > 10_000
