"""The whole stack as a user starts it: `honcho start` with the shipped Procfile and lambdalite.toml,
the embedded redis-server, a JPEG copied in with `cp`, and Ctrl-C."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import psutil
import pytest
from PIL import Image

from tests.stack import BIN, ROOT, free_port, lambdalite

pytestmark = pytest.mark.serial  # Ctrl-C stops the stack within 5 s: run alone (make test)


@pytest.mark.timeout(180)
def test_honcho_stack_makes_a_thumbnail_and_stops_cleanly_on_ctrl_c(project: Path) -> None:
    for name in ("Procfile", "lambdalite.toml"):
        shutil.copy(ROOT / name, project / name)
    (project / "buckets" / "uploads").mkdir(parents=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("LAMBDALITE_")}
    # The project sits below pytest's 0700 temp root, which the sandbox user cannot enter; the shipped
    # handler as the sandbox user: tests/test_sandbox_identity.py.
    env.update(PATH=f"{BIN}:{env['PATH']}", PYTHONPATH=str(ROOT), LAMBDALITE_HTTP_PORT=str(free_port()),
               LAMBDALITE_IDLE_TIMEOUT="2", LAMBDALITE_SANDBOX_USER="root")
    log = (project / "honcho.log").open("w")
    honcho = subprocess.Popen([str(BIN / "honcho"), "start"], cwd=project, env=env, stdout=log,
                              stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while lambdalite(project, env, "status", "--json").returncode != 0:
            assert honcho.poll() is None, (project / "honcho.log").read_text()
            assert time.monotonic() < deadline, "the stack did not come up"
            time.sleep(0.2)
        assert (project / "var" / "redis.sock").exists(), "the embedded redis-server serves the stack"

        photo = project / "photo.jpg"
        Image.new("RGB", (640, 480), (200, 30, 40)).save(photo, "JPEG")
        (project / "notes.txt").write_text("not a photo")
        subprocess.run(["cp", str(photo), str(project / "buckets" / "uploads" / "red flower.jpg")], check=True)
        subprocess.run(["cp", str(project / "notes.txt"), str(project / "buckets" / "uploads" / "notes.txt")],
                       check=True)
        subprocess.run(["cp", str(project / "notes.txt"), str(project / "buckets" / "uploads" / "broken.jpg")],
                       check=True)
        copied = time.monotonic()
        thumb = project / "buckets" / "thumbnails" / "red flower.jpg"
        while not thumb.exists():
            assert time.monotonic() - copied < 30, (project / "honcho.log").read_text()
            time.sleep(0.02)
        took = time.monotonic() - copied
        with Image.open(thumb) as image:
            assert image.size == (128, 96) and image.format == "JPEG"
        print(f"cp -> thumbnail: {took:.2f}s")

        # broken.jpg is not an image: it fails, is retried twice (1 s, then 2 s later), then dead-lettered
        deadline = time.monotonic() + 30
        while (row := json.loads(lambdalite(project, env, "status", "--json").stdout)["functions"]["thumbnail"]
               )["dead"] == 0:
            assert time.monotonic() < deadline, row
            time.sleep(0.2)
        assert (row["succeeded"], row["failed"], row["retried"], row["dead"], row["queued"]) == (1, 3, 2, 1, 0), row
        assert not (project / "buckets" / "thumbnails" / "notes.txt").exists(), "no trigger for .txt"
        assert not (project / "buckets" / "thumbnails" / "broken.jpg").exists()
        [dead] = json.loads(lambdalite(project, env, "dlq", "list", "thumbnail").stdout)
        assert dead["error"]["errorType"] == "UnidentifiedImageError"
        assert dead["event"]["payload"]["Records"][0]["s3"]["object"]["key"] == "broken.jpg"
        # idle_timeout 2 s: the worker is retired and the function scales back to zero
        deadline = time.monotonic() + 20
        while json.loads(lambdalite(project, env, "status", "--json").stdout)["functions"]["thumbnail"]["workers"]:
            assert time.monotonic() < deadline, "the worker was not retired"
            time.sleep(0.2)
    finally:
        family = psutil.Process(honcho.pid).children(recursive=True)
        stopping = time.monotonic()
        os.killpg(honcho.pid, signal.SIGINT)  # what Ctrl-C in the terminal sends
        honcho.wait(15)
        stopped = time.monotonic() - stopping
        log.close()
        _, alive = psutil.wait_procs(family, timeout=2)
        for proc in alive:
            proc.kill()
    assert stopped < 5, f"Ctrl-C took {stopped:.2f}s"
    assert alive == [], f"left behind: {alive}"
    text = (project / "honcho.log").read_text()
    assert "REPORT RequestId:" in text and "thumbnail: scale-up" in text
    assert "[ERROR] UnidentifiedImageError: cannot identify image file" in text
