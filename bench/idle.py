"""What an idle stack costs: ``python bench/idle.py [--seconds 10] [--write]``.

Starts the shipped stack (``honcho start`` with this folder's Procfile and lambdalite.toml) in a
scratch folder, lets it settle (by default until the HTTP server has stood by: 5 s past
``LAMBDALITE_HTTP_IDLE_STANDBY``'s default), then measures over ``--seconds`` with no events at all:
the number of processes, their PSS summed (honcho and Redis included) and the CPU they use, as a
share of one core. Then what the stand-by costs the next caller: a ``GET /healthz`` that wakes the
server, beside the one after it.
The reference, measured in the same run the same way: what a plain RQ user leaves running, one
redis-server (the same binary) and one ``rq worker``. ``--write`` puts the table in
docs/performance.md.
"""

from __future__ import annotations

import sys as _sys
from pathlib import Path as _Path

_sys.path[:] = [p for p in _sys.path if _Path(p or ".").resolve() != _Path(__file__).resolve().parent]

import argparse
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from report import table, write_section  # noqa: E402

from broker.settings import Settings  # noqa: E402


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LAMBDALITE_")}
    env.update(PATH=f"{BIN}:{env['PATH']}", PYTHONPATH=str(ROOT), LAMBDALITE_HTTP_PORT=str(_free_port()),
               LAMBDALITE_SANDBOX_USER="root")  # the project is a 0700 temp folder
    return env


def measure(root: psutil.Process, seconds: float) -> tuple[int, float, float]:
    """(processes, PSS MB summed, CPU % of one core) of ``root`` and its descendants over ``seconds``."""
    def tree() -> list[psutil.Process]:
        return [root, *root.children(recursive=True)]

    def cpu(procs: list[psutil.Process]) -> dict[int, float]:
        out = {}
        for p in procs:
            try:
                t = p.cpu_times()
                out[p.pid] = t.user + t.system
            except psutil.NoSuchProcess:
                pass
        return out

    procs = tree()
    before, started = cpu(procs), time.monotonic()
    time.sleep(seconds)
    after, took = cpu(procs), time.monotonic() - started
    used = sum(after[pid] - before[pid] for pid in after if pid in before)
    pss = 0
    for p in tree():
        with contextlib.suppress(psutil.NoSuchProcess):
            mine = p.memory_full_info().pss
            pss += mine
            print(f"  {mine / 2**20:6.1f} MB PSS  {' '.join(p.cmdline())[:100]}")
    return len(tree()), pss / 2**20, 100 * used / took


def _get_ms(port: int) -> float:
    started = time.perf_counter()
    with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
        s.sendall(b"GET /healthz HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
        answer = b""
        while chunk := s.recv(4096):
            answer += chunk
    if not answer.startswith(b"HTTP/1.1 200"):
        raise SystemExit(f"/healthz answered {answer[:80]!r}")
    return (time.perf_counter() - started) * 1000


def lambdalite_idle(seconds: float, settle: float) -> tuple[int, float, float, float, float]:
    folder = Path(tempfile.mkdtemp(prefix="ll-idle-"))
    for name in ("Procfile", "lambdalite.toml"):
        shutil.copy(ROOT / name, folder / name)
    (folder / "buckets" / "uploads").mkdir(parents=True)
    env = _env()
    log = (folder / "honcho.log").open("w")
    honcho = subprocess.Popen([str(BIN / "honcho"), "start"], cwd=folder, env=env, stdout=log,
                              stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while subprocess.run([str(BIN / "lambdalite"), "status", "--json"], cwd=folder, env=env,
                             capture_output=True).returncode != 0:
            if honcho.poll() is not None or time.monotonic() > deadline:
                raise SystemExit("the stack did not start:\n" + (folder / "honcho.log").read_text())
            time.sleep(0.2)
        time.sleep(settle)
        count, pss, cpu = measure(psutil.Process(honcho.pid), seconds)
        port = int(env["LAMBDALITE_HTTP_PORT"])
        woken = _get_ms(port)
        return count, pss, cpu, woken, _get_ms(port)
    finally:
        os.killpg(honcho.pid, signal.SIGINT)
        honcho.wait(15)
        log.close()
        shutil.rmtree(folder, ignore_errors=True)


def rq_idle(seconds: float, settle: float) -> tuple[int, float, float]:
    from broker.redis_server.embedded import RedisServer

    folder = Path(tempfile.mkdtemp(prefix="ll-idle-rq-"))
    server = RedisServer(folder, appendonly=True).start()
    worker = subprocess.Popen([str(BIN / "rq"), "worker", "--url", server.url, "default"], cwd=folder,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        time.sleep(settle + 2)  # rq worker's start-up
        procs = [psutil.Process(worker.pid)]
        assert server.proc is not None
        count_w, pss_w, cpu_w = measure(procs[0], seconds)
        redis_proc = psutil.Process(server.proc.pid)
        count_r, pss_r, cpu_r = measure(redis_proc, 0.01)
        return count_w + count_r, pss_w + pss_r, cpu_w + cpu_r
    finally:
        worker.send_signal(signal.SIGTERM)
        try:
            worker.wait(5)
        except subprocess.TimeoutExpired:  # an idle rq worker waits in BLPOP for its dequeue timeout
            worker.kill()
            worker.wait()
        server.stop()
        shutil.rmtree(folder, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--settle", type=float, default=5.0 + Settings.model_fields["http_idle_standby"].default)
    parser.add_argument("--write", action="store_true", help="write the table into docs/performance.md")
    args = parser.parse_args()
    ours = lambdalite_idle(args.seconds, args.settle)
    ref = rq_idle(args.seconds, args.settle)
    rows = [
        ["lambdalite, shipped lambdalite.toml, no events", f"{ours[0]}", f"{ours[1]:.0f} MB", f"{ours[2]:.2f} %"],
        ["plain RQ: redis-server + one `rq worker` (reference)", f"{ref[0]}", f"{ref[1]:.0f} MB", f"{ref[2]:.2f} %"],
    ]
    text = table(["idle stack", "processes", "PSS summed", "CPU (share of one core)"], rows)
    text += (f"\n\nGoal: at most 150 MB PSS and under 1 % of one core; measured over {args.seconds:g} s "
             f"after {args.settle:g} s of settling (the HTTP server stands by after "
             f"{Settings.model_fields['http_idle_standby'].default:g} s without a request). The stand-by's cost "
             f"to the next caller: `GET /healthz` {ours[3]:.0f} ms when it wakes the server, "
             f"{ours[4]:.1f} ms the next one.")
    print(text)
    if args.write:
        print("written to", write_section("performance.md", "idle", text,
                                          "python bench/idle.py --write"))


if __name__ == "__main__":
    main()
