"""Live reload on the real scaler: a steady stream of events while lambdalite.toml gains a function, a
handler file changes, and an invalid edit is made and reverted. Every event accepted runs exactly
once, on the code of the revision its START line names; the new function's events run; the invalid
edit is refused in one log line naming the file, the function and the key, and the running revision
stays."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import pytest
import redis

from broker import revision
from broker.envelope import Event
from broker.queues import Publisher, function_queue
from broker.registry import load_registry
from tests.stack import Scaler, cli, close_redis_clients, redis_client  # noqa: F401 (an autouse fixture)
from tests.waiting import wait_until

HANDLER = '''"""Records each run: its request id, the code it ran and when."""
import json, os, time
CODE = {code!r}
HERE = os.path.dirname(os.path.abspath(__file__))


def handler(event, context):
    started = time.time()
    with open(os.path.join(HERE, "runs.jsonl"), "a") as f:
        f.write(json.dumps({{"id": context.aws_request_id, "fn": context.function_name, "code": CODE,
                            "at": started}}) + "\\n")
    return {{"code": CODE}}
'''

ONE = """
[functions.alpha]
handler = "reloadee.handler"
max_concurrency = 2
"""
TWO = ONE + """
[functions.beta]
handler = "reloadee_beta.handler"
"""
INVALID = TWO.replace("max_concurrency = 2", "max_concurrency = 2\ntimeot = 3")


def runs(project: Path) -> list[dict]:
    path = project / "runs.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def running_number(client: redis.Redis) -> int:
    found = revision.read(client)
    return found[0].number if found is not None else 0


class Stream:
    """Publishes an event every ``gap`` s to each function of the running revision (followed as the
    CLI and the HTTP source follow it); keeps the ids of the events accepted."""

    def __init__(self, client: redis.Redis, project: Path, gap: float = 0.02) -> None:
        self.registry = load_registry(project / "lambdalite.toml")
        self.follower = revision.Follower(client, project / "lambdalite.toml", self.registry.replace)
        self.publisher = Publisher(client, self.registry)
        self.accepted: dict[str, tuple[str, float]] = {}  # id -> (function, when)
        self.gap = gap
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run)

    def run(self) -> None:
        n = 0
        while not self.stop.wait(self.gap):
            for fn in list(self.registry.functions):
                n += 1
                event = Event(function=fn, payload={"n": n})
                self.publisher.publish(event)
                self.accepted[event.id] = (fn, time.time())

    def __enter__(self) -> Stream:
        self.follower.start()
        assert self.follower.ready.wait(10)
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(10)
        self.follower.stop()


def start_versions(project: Path, function: str) -> dict[str, str]:
    """request id -> the Version of its START line, from the function's log store."""
    done = cli(project, "logs", function, "--since", "10m")
    assert done.returncode == 0, done.stderr
    return dict(re.findall(r"START RequestId: (\S+) Version: (\S+)", done.stdout))


@pytest.mark.timeout(180)
def test_reload_under_a_stream_of_events(project: Path, redis_url: str) -> None:
    (project / "reloadee.py").write_text(HANDLER.format(code="v1"))
    (project / "reloadee_beta.py").write_text(HANDLER.format(code="beta"))
    (project / "lambdalite.toml").write_text(ONE)
    client = redis_client(redis_url)
    scaler = Scaler(project)
    code_of: dict[int, str] = {}
    try:
        wait_until(lambda: running_number(client) == 1, what="revision 1 published")
        code_of[1] = "v1"
        with Stream(client, project) as stream:
            wait_until(lambda: len(runs(project)) >= 10, what="alpha runs")

            (project / "lambdalite.toml").write_text(TWO)  # gains a function
            edited = time.time()
            wait_until(lambda: running_number(client) == 2, what="revision 2")
            code_of[2] = "v1"
            wait_until(lambda: any(r["fn"] == "beta" for r in runs(project)), what="beta runs")
            beta_after = min(r["at"] for r in runs(project) if r["fn"] == "beta") - edited

            (project / "reloadee.py").write_text(HANDLER.format(code="v2 (edited)"))  # new code
            wait_until(lambda: running_number(client) == 3, what="revision 3")
            code_of[3] = "v2 (edited)"
            wait_until(lambda: any(r["code"] == "v2 (edited)" for r in runs(project)), what="alpha runs the new code")

            (project / "lambdalite.toml").write_text(INVALID)  # refused: revision 3 keeps running
            wait_until(lambda: "reload refused" in scaler.output(), what="the refusal")
            status = json.loads(cli(project, "status", "--json").stdout)
            (project / "lambdalite.toml").write_text(TWO)  # reverted: the running revision's own file
            wait_until(lambda: not revision.refused(client), what="the refusal forgotten")
            time.sleep(1.0)
        assert running_number(client) == 3
        accepted = stream.accepted
        wait_until(lambda: len(runs(project)) >= len(accepted), what="every accepted event ran", timeout=60)
        time.sleep(0.5)  # a run beyond them (run twice) would show now
    finally:
        scaler.stop()
    refusals = [line for line in scaler.output().splitlines() if "reload refused" in line]
    assert len(refusals) == 1, scaler.output()
    assert "lambdalite.toml" in refusals[0] and "'alpha'" in refusals[0] and "timeot" in refusals[0]
    assert status["revision"]["number"] == 3 and "timeot" in status["revision"]["refused"]

    done = runs(project)
    counts = Counter(r["id"] for r in done)
    assert set(counts) == set(accepted), "an event accepted did not run, or one ran that was not accepted"
    assert max(counts.values()) == 1, [i for i, c in counts.items() if c > 1]
    versions = {**start_versions(project, "alpha"), **start_versions(project, "beta")}
    for r in done:
        version = int(versions[r["id"]])
        expected = "beta" if r["fn"] == "beta" else code_of[version]
        assert r["code"] == expected, (r, version)
    # alpha's workers of revision 1 run on through revision 2 (alpha did not change); revision 3 replaced them
    assert {1, 3} <= {int(versions[r["id"]]) for r in done if r["fn"] == "alpha"} <= {1, 2, 3}
    print(f"beta's first run {beta_after:.2f} s after the edit; {len(done)} events")
    scaler_log = scaler.output()
    assert "revision 2 of lambdalite.toml accepted: beta changed" in scaler_log, scaler_log
    assert "Traceback" not in scaler_log, scaler_log


SOURCES_ONE = """
[functions.alpha]
handler = "reloadee.handler"
"""
GAMMA = """
[functions.gamma]
handler = "reloadee_gamma.handler"
max_concurrency = 1

[[functions.gamma.triggers]]
source = "http"
path = "/gamma"
methods = ["POST"]

[[functions.gamma.triggers]]
source = "files"
bucket = "uploads"
"""
SLOW = '''import json, os, time
HERE = os.path.dirname(os.path.abspath(__file__))


def handler(event, context):
    with open(os.path.join(HERE, "runs.jsonl"), "a") as f:
        f.write(json.dumps({"id": context.aws_request_id, "fn": context.function_name, "code": "gamma",
                            "at": time.time()}) + "\\n")
    time.sleep(event.get("sleep", 0) if isinstance(event, dict) else 0)
    return {"statusCode": 200, "body": "gamma"}
'''


@pytest.mark.timeout(180)
def test_every_process_follows_a_function_added_then_removed(project: Path, redis_url: str) -> None:
    import httpx

    from tests.stack import FilesProcess, WebhookProcess

    (project / "reloadee.py").write_text(HANDLER.format(code="v1"))
    (project / "reloadee_gamma.py").write_text(SLOW)
    (project / "buckets" / "uploads").mkdir()
    (project / "lambdalite.toml").write_text(SOURCES_ONE)
    client = redis_client(redis_url)
    scaler = Scaler(project)
    files = FilesProcess(project)
    web = WebhookProcess(project)
    invoke_path = "/2015-03-31/functions/gamma/invocations"
    try:
        wait_until(lambda: running_number(client) == 1, what="revision 1 published")
        wait_until(lambda: _get(web.url + "/healthz") == 200, what="the webhook serves")
        assert httpx.post(web.url + "/gamma", json={}).status_code == 404
        assert httpx.post(web.url + invoke_path, json={}).status_code == 404
        assert cli(project, "invoke", "gamma", "--async").returncode == 1

        (project / "lambdalite.toml").write_text(SOURCES_ONE + GAMMA)  # gamma, with an HTTP and a files trigger
        wait_until(lambda: running_number(client) == 2, what="revision 2")
        wait_until(lambda: "now running revision 2" in web.output(), what="the webhook follows")
        wait_until(lambda: "now running revision 2" in files.output(), what="the files source follows")
        assert httpx.post(web.url + "/gamma", json={}, timeout=30).status_code == 200
        reply = httpx.post(web.url + invoke_path, json={}, timeout=30)
        assert reply.status_code == 200 and reply.json() == {"statusCode": 200, "body": "gamma"}
        (project / "buckets" / "uploads" / "new.txt").write_text("hello")
        wait_until(lambda: sum(r["fn"] == "gamma" for r in runs(project)) >= 3, what="the files source notifies gamma")

        running = revision.running(client, project / "lambdalite.toml")
        for _ in range(4):  # gamma is busy with the first for 3 s; the others wait in its queue
            Publisher(client, running).publish(Event(function="gamma", payload={"sleep": 3}))
        wait_until(lambda: sum(r["fn"] == "gamma" for r in runs(project)) >= 4, what="gamma runs the first")
        (project / "lambdalite.toml").write_text(SOURCES_ONE)  # gamma removed
        wait_until(lambda: running_number(client) == 3, what="revision 3")
        wait_until(lambda: "now running revision 3" in web.output(), what="the webhook follows")
        wait_until(lambda: "now running revision 3" in files.output(), what="the files source follows")
        assert httpx.post(web.url + "/gamma", json={}).status_code == 404
        assert httpx.post(web.url + invoke_path, json={}).status_code == 404
        refused = cli(project, "invoke", "gamma", "--async")
        assert refused.returncode == 1 and "no function named 'gamma'" in refused.stderr
        time.sleep(4)  # the running invocation finishes on its worker; the queued ones stay
        status = json.loads(cli(project, "status", "--json").stdout)
        row = status["functions"]["gamma"]
        assert row["removed"] is True and row["queued"] == 3 and row["workers"] == 0, row
        assert sum(r["fn"] == "gamma" for r in runs(project)) == 4
        (project / "buckets" / "uploads" / "later.txt").write_text("nobody listens")
        time.sleep(1)
        assert client.llen(function_queue(client, "gamma").key) == 3
    finally:
        for proc in (web, files, scaler):
            proc.stop()
    assert "Traceback" not in web.output() + files.output() + scaler.output()
    assert "now running revision 3" in web.output() and "now running revision 3" in files.output()


def _get(url: str) -> int:
    import httpx

    try:
        return httpx.get(url, timeout=2).status_code
    except httpx.HTTPError:
        return 0


@pytest.mark.timeout(120)
def test_reload_command_and_sighup(project: Path, redis_url: str) -> None:
    (project / "reloadee.py").write_text(HANDLER.format(code="v1"))
    (project / "lambdalite.toml").write_text(ONE)
    client = redis_client(redis_url)
    quiet = cli(project, "reload", "--wait", "2")
    assert quiet.returncode == 1 and "no scaler is running" in quiet.stderr
    scaler = Scaler(project)
    try:
        wait_until(lambda: running_number(client) == 1, what="revision 1 published")
        scaler.proc.send_signal(signal.SIGHUP)  # looks again: nothing changed, nothing restarts
        done = cli(project, "reload")
        assert done.returncode == 0 and done.stdout.strip() == "revision 1 of lambdalite.toml is running", done
        assert scaler.proc.poll() is None and running_number(client) == 1

        (project / "lambdalite.toml").write_text(ONE + "retries = 0\n")
        done = cli(project, "reload")
        assert done.returncode == 0 and done.stdout.strip() == "revision 2 of lambdalite.toml is running", done

        (project / "lambdalite.toml").write_text(ONE + "retries = -1\n")
        refused = cli(project, "reload")
        assert refused.returncode == 1 and "'alpha'" in refused.stderr and "retries" in refused.stderr
        assert len(refused.stderr.splitlines()) == 1
        assert running_number(client) == 2
    finally:
        scaler.stop()
    assert "Traceback" not in scaler.output()


ROWS = """
[functions.rows]
handler = "reloadee_beta.handler"

[[functions.rows.triggers]]
source = "sqlite"
database = "app.db"
table = "items"
"""


def sqlite_process(project: Path) -> tuple[subprocess.Popen[bytes], Path]:
    from tests.stack import env

    log = project / f"sqlite-{time.monotonic_ns()}.log"
    with log.open("w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "sources.sqlite"], cwd=project, env=env(),
                                stdout=out, stderr=subprocess.STDOUT)
    return proc, log


def standing_by(proc: subprocess.Popen[bytes]) -> bool:
    import psutil

    try:
        return any("standby.py" in part for part in psutil.Process(proc.pid).cmdline())
    except psutil.Error:  # read while it execs
        return False


@pytest.mark.timeout(180)
def test_the_sqlite_feed_stands_by_until_a_revision_brings_it_a_trigger(project: Path, redis_url: str) -> None:
    import sqlite3

    (project / "reloadee.py").write_text(HANDLER.format(code="v1"))
    (project / "reloadee_beta.py").write_text(HANDLER.format(code="rows"))
    db = sqlite3.connect(project / "app.db", isolation_level=None)
    db.execute("CREATE TABLE items(id INTEGER PRIMARY KEY, name TEXT)")
    (project / "lambdalite.toml").write_text(ONE)
    client = redis_client(redis_url)
    scaler = Scaler(project)
    feed, log = sqlite_process(project)
    try:
        wait_until(lambda: running_number(client) == 1, what="revision 1 published")
        wait_until(lambda: standing_by(feed), what="the feed stands by")
        (project / "lambdalite.toml").write_text(ONE + ROWS)
        wait_until(lambda: running_number(client) == 2, what="revision 2")
        wait_until(lambda: not standing_by(feed) and "following 1 sqlite stream" in log.read_text(),
                   what="the feed follows it")
        # A change is captured from the moment the feed's triggers are in the database (as a
        # DynamoDB stream records from when it is enabled), a step after the line above.
        wait_until(lambda: db.execute("SELECT count(*) FROM sqlite_master WHERE type = 'trigger'").fetchone()[0] > 0,
                   what="the capture installed")
        db.execute("INSERT INTO items(name) VALUES ('first')")
        wait_until(lambda: any(r["fn"] == "rows" for r in runs(project)), what="the row's batch runs")
        (project / "lambdalite.toml").write_text(ONE)
        wait_until(lambda: running_number(client) == 3, what="revision 3")
        wait_until(lambda: standing_by(feed), what="the feed stands by again")
        assert feed.poll() is None
    finally:
        feed.send_signal(signal.SIGTERM)
        feed.wait(10)
        scaler.stop()
        db.close()
    assert "Traceback" not in log.read_text(), log.read_text()


SLEEPER = '''import time


def handler(event, context):
    time.sleep(event["sleep"])
    return {"slept": event["sleep"], "limit_ms": context.get_remaining_time_in_millis()}
'''


@pytest.mark.timeout(120)
def test_changed_limits_apply_to_new_invocations(project: Path, redis_url: str) -> None:
    from tests.stack import invoke

    (project / "sleeper.py").write_text(SLEEPER)
    (project / "lambdalite.toml").write_text('[functions.nap]\nhandler = "sleeper.handler"\ntimeout = 1\n')
    client = redis_client(redis_url)
    with Scaler(project) as scaler:
        wait_until(lambda: running_number(client) == 1, what="revision 1 published")
        short = invoke(redis_url, project, "nap", {"sleep": 1.5})
        assert not short.ok and "timed out" in json.dumps(short.error), short
        (project / "lambdalite.toml").write_text('[functions.nap]\nhandler = "sleeper.handler"\ntimeout = 10\n')
        wait_until(lambda: running_number(client) == 2, what="revision 2")
        longer = invoke(redis_url, project, "nap", {"sleep": 1.5})
        assert longer.ok and longer.result["limit_ms"] > 5000, longer
    assert "nap changed" in scaler.output()
