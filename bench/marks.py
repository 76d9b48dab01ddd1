"""The marker handler the file benches run, and the start times it leaves (bench/files_latency.py,
bench/files_large.py): each invocation appends its object's key and the time its handler started
to the file ``BENCH_MARKS`` names."""

from __future__ import annotations

import time
from pathlib import Path

MARKER = '''
import os, time

def handler(event, context):
    started = time.time()
    key = event["Records"][0]["s3"]["object"]["key"]
    with open(os.environ["BENCH_MARKS"], "a") as out:
        out.write(f"{key} {started!r}\\n")
'''


class Marks:
    """The handlers' start times, read from the file the marker handler appends to."""

    def __init__(self, path: Path) -> None:
        self.path, self.got = path, dict[str, float]()

    def arrived(self, key: str) -> bool:
        for line in self.path.read_text().split("\n")[:-1]:  # complete lines: a line being written is read next time
            name, _, at = line.partition(" ")
            self.got[name] = float(at)
        return key in self.got

    def wait(self, key: str, timeout: float) -> float:
        """When the handler for ``key`` started (epoch seconds), looked for every 0.5 ms."""
        deadline = time.monotonic() + timeout
        while not self.arrived(key):
            if time.monotonic() > deadline:
                raise SystemExit(f"bench: no handler ran for {key} within {timeout:.0f} s")
            time.sleep(0.0005)
        return self.got[key]
