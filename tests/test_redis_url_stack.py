"""The whole stack (`honcho start`) on a Redis that asks for a password, in a database other than 0:
every process kind (scaler and workers, files, sqlite, the HTTP source and the CLI) reads the same
LAMBDALITE_REDIS_URL, an event from each source reaches its handler, and every key lands in that
database."""

from __future__ import annotations

import json
import shutil
import sqlite3
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import redis

from broker.redis_server.embedded import RedisServer
from tests.stack import ROOT, lambdalite, stack_env, start_stack, stop_stack, wait_up

PASSWORD = "stack-s3cret"
DB = 6

HANDLERS = '''
import json
from pathlib import Path

OUT = Path(__file__).parent / "out"


def seen(event, context):
    OUT.mkdir(exist_ok=True)
    with (OUT / (context.function_name + ".jsonl")).open("a") as f:
        f.write(json.dumps(event) + "\\n")
    return {"statusCode": 200, "body": "seen by " + context.function_name}
'''

FUNCTIONS = '''
[functions.uploads]
handler = "url_handlers.seen"
[[functions.uploads.triggers]]
source = "files"
bucket = "uploads"

[functions.rows]
handler = "url_handlers.seen"
[[functions.rows.triggers]]
source = "sqlite"
database = "app.db"
table = "items"

[functions.hook]
handler = "url_handlers.seen"
[[functions.hook.triggers]]
source = "http"
path = "/hook"
methods = ["POST"]
'''


@pytest.fixture
def locked() -> Iterator[RedisServer]:
    folder = Path(tempfile.mkdtemp(prefix="ll-stackurl-"))
    server = RedisServer(folder).start()
    try:
        redis.Redis.from_url(server.url).config_set("requirepass", PASSWORD)
        yield server
    finally:
        server.stop()
        shutil.rmtree(folder, ignore_errors=True)


def _seen(project: Path, name: str, timeout: float = 90) -> list[dict[str, object]]:
    path = project / "out" / f"{name}.jsonl"
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert time.monotonic() < deadline, f"{name} never ran\n" + (project / "honcho.log").read_text()[-4000:]
        time.sleep(0.2)
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.mark.timeout(240)
def test_every_process_honours_a_password_and_a_database(project: Path, locked: RedisServer) -> None:
    shutil.copy(ROOT / "Procfile", project / "Procfile")
    (project / "lambdalite.toml").write_text(FUNCTIONS)
    (project / "url_handlers.py").write_text(HANDLERS)
    (project / "buckets" / "uploads").mkdir(parents=True)
    with sqlite3.connect(project / "app.db") as db:
        db.execute("CREATE TABLE items(id INTEGER PRIMARY KEY, name TEXT)")
    url = f"unix://:{PASSWORD}@{locked.socket}?db={DB}"
    env = stack_env(project, LAMBDALITE_REDIS_URL=url)
    honcho = start_stack(project, env, "honcho.log")
    try:
        wait_up(project, env, honcho, "honcho.log")  # the CLI's status answers: it reached the database
        base = f"http://127.0.0.1:{env['LAMBDALITE_HTTP_PORT']}"
        deadline = time.monotonic() + 60
        while True:
            try:
                answer = httpx.post(f"{base}/hook", json={"n": 1}, timeout=30)
                if answer.status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "the HTTP source did not answer\n" + \
                (project / "honcho.log").read_text()[-4000:]
            time.sleep(0.2)
        assert answer.text == "seen by hook"
        (project / "buckets" / "uploads" / "a.txt").write_text("hello")
        with sqlite3.connect(project / "app.db") as db:
            db.execute("INSERT INTO items VALUES (1, 'kettle')")
        assert json.loads(_seen(project, "hook")[0]["body"]) == {"n": 1}  # type: ignore[arg-type]
        assert _seen(project, "uploads")[0]["Records"][0]["s3"]["object"]["key"] == "a.txt"  # type: ignore[index]
        assert _seen(project, "rows")[0]["Records"][0]["eventName"] == "INSERT"  # type: ignore[index]

        deadline = time.monotonic() + 60
        while True:
            done = lambdalite(project, env, "status", "--json")
            assert done.returncode == 0, done.stderr
            counts = {name: row["succeeded"] for name, row in json.loads(done.stdout)["functions"].items()}
            if counts == {"uploads": 1, "rows": 1, "hook": 1}:
                break
            assert time.monotonic() < deadline, counts
            time.sleep(0.2)
    finally:
        stop_stack(honcho)
        output = (project / "honcho.log").read_text()

    admin = redis.Redis(unix_socket_path=str(locked.socket), password=PASSWORD)
    try:
        spaces = admin.info("keyspace")
        assert list(spaces) == [f"db{DB}"], f"every key in database {DB}: {spaces}"
        admin.execute_command("SELECT", DB)
        keys = {k.decode() for k in admin.scan_iter(count=1000)}
    finally:
        admin.close()
    assert any(k.startswith("rq:") for k in keys) and any(k.startswith("lambdalite:") for k in keys), keys
    assert "NOAUTH" not in output and "WRONGPASS" not in output, output[-4000:]
