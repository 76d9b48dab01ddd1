"""Handlers written with Powertools for AWS Lambda run unchanged on the whole stack (`honcho start`):
its strict parser models accept the files source's S3 events, the SQLite feed's DynamoDB Streams
records (numbers DynamoDB cannot hold included) and the HTTP source's API Gateway v2 events, and an
``APIGatewayHttpResolver`` app answers through the HTTP source with its own status codes, headers
and bodies."""

from __future__ import annotations

import json
import shutil
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.stack import ROOT, stack_env, start_stack, stop_stack, wait_up
from tests.waiting import wait_until

HANDLERS = '''
import json
from pathlib import Path

from aws_lambda_powertools.event_handler import APIGatewayHttpResolver
from aws_lambda_powertools.utilities.parser import parse
from aws_lambda_powertools.utilities.parser.models import (
    APIGatewayProxyEventV2Model, DynamoDBStreamModel, S3Model)

OUT = Path(__file__).parent / "out"


def _write(name, rows):
    OUT.mkdir(exist_ok=True)
    with (OUT / f"{name}.jsonl").open("a") as f:
        for row in rows:
            f.write(json.dumps(row, default=str) + "\\n")


def s3(event, context):
    model = parse(event=event, model=S3Model)  # raises on anything the model refuses
    _write("s3", [{"event": r.eventName, "bucket": r.s3.bucket.name, "key": r.s3.object.key,
                   "size": r.s3.object.size, "region": r.awsRegion} for r in model.Records])


def stream(event, context):
    model = parse(event=event, model=DynamoDBStreamModel)  # deserializes each image with boto3's TypeDeserializer
    _write("stream", [{"event": r.eventName, "keys": r.dynamodb.Keys, "new": r.dynamodb.NewImage,
                       "old": r.dynamodb.OldImage} for r in model.Records])


app = APIGatewayHttpResolver()


@app.get("/items/<item_id>")
def get_item(item_id):
    return {"id": item_id, "color": app.current_event.get_query_string_value("color")}


@app.post("/items")
def create_item():
    return {"created": app.current_event.json_body}


def api(event, context):
    parse(event=event, model=APIGatewayProxyEventV2Model)
    return app.resolve(event, context)
'''

FUNCTIONS = '''
[functions.s3]
handler = "pt_handlers.s3"
[[functions.s3.triggers]]
source = "files"
bucket = "uploads"
events = ["s3:ObjectCreated:*", "s3:ObjectRemoved:*"]

[functions.stream]
handler = "pt_handlers.stream"
[[functions.stream.triggers]]
source = "sqlite"
database = "app.db"
table = "items"

[functions.api]
handler = "pt_handlers.api"
[[functions.api.triggers]]
source = "http"
path = "/items"
methods = ["POST"]
[[functions.api.triggers]]
source = "http"
path = "/items/{id}"
methods = ["GET", "DELETE"]
'''


@pytest.fixture
def stack(project: Path) -> Iterator[tuple[Path, str]]:
    shutil.copy(ROOT / "Procfile", project / "Procfile")
    (project / "lambdalite.toml").write_text(FUNCTIONS)
    (project / "pt_handlers.py").write_text(HANDLERS)
    (project / "buckets" / "uploads").mkdir(parents=True)
    with sqlite3.connect(project / "app.db") as db:
        db.execute("CREATE TABLE items(id INTEGER PRIMARY KEY, name TEXT, n REAL)")
    env = stack_env(project)
    honcho = start_stack(project, env, "honcho.log")
    try:
        wait_up(project, env, honcho, "honcho.log")
        base = f"http://127.0.0.1:{env['LAMBDALITE_HTTP_PORT']}"
        wait_serving(base)
        yield project, base
    finally:
        stop_stack(honcho)


def wait_serving(base: str, timeout: float = 60) -> None:
    def healthy() -> bool:
        try:
            return httpx.get(f"{base}/healthz", timeout=5).status_code == 200
        except httpx.TransportError:
            return False
    wait_until(healthy, timeout, "the HTTP source up", every=0.2)


def rows(project: Path, name: str, count: int, timeout: float = 60) -> list[dict[str, Any]]:
    path = project / "out" / f"{name}.jsonl"

    def parsed() -> list[dict[str, Any]]:
        return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []
    wait_until(lambda: len(parsed()) >= count, timeout, f"{count} {name} records parsed", every=0.1,
               detail=lambda: f"{len(parsed())} parsed\n" + (project / "honcho.log").read_text()[-4000:])
    return parsed()


@pytest.mark.timeout(180)
def test_powertools_parses_every_source_and_its_resolver_answers_over_http(stack: tuple[Path, str]) -> None:
    project, base = stack
    # API Gateway v2 through the resolver: its routes, its 404, its headers and status codes.
    with httpx.Client(base_url=base, timeout=30) as http:
        got = http.get("/items/42", params={"color": "red"})
        assert got.status_code == 200, got.text
        assert got.json() == {"id": "42", "color": "red"}
        assert got.headers["content-type"] == "application/json"
        got = http.post("/items", json={"name": "kettle", "price": 12.5})
        assert got.status_code == 200, got.text
        assert got.json() == {"created": {"name": "kettle", "price": 12.5}}
        got = http.delete("/items/42")  # a route of the stack the resolver does not serve: its own 404
        assert got.status_code == 404, got.text
        assert got.json() == {"statusCode": 404, "message": "Not found"}

    # S3 events from a folder: created and removed, each record through S3Model.
    uploads = project / "buckets" / "uploads"
    (uploads / "reports").mkdir()
    (uploads / "reports" / "day.csv").write_bytes(b"a,b\n1,2\n")
    created = rows(project, "s3", 1)
    assert created == [{"event": "ObjectCreated:Put", "bucket": "uploads", "key": "reports/day.csv", "size": 8,
                        "region": created[0]["region"]}]
    (uploads / "reports" / "day.csv").unlink()
    removed = rows(project, "s3", 2)[1]
    assert (removed["event"], removed["key"], removed["size"]) == ("ObjectRemoved:Delete", "reports/day.csv", None)

    # DynamoDB Streams records from SQLite through DynamoDBStreamModel, whose images go through boto3's
    # TypeDeserializer: an ordinary REAL comes back a Decimal, one DynamoDB cannot hold as a string.
    with sqlite3.connect(project / "app.db") as db:
        db.execute("INSERT INTO items VALUES (1, 'kettle', 12.5)")
        db.execute("INSERT INTO items VALUES (2, 'huge', 1e300)")
    with sqlite3.connect(project / "app.db") as db:
        db.execute("UPDATE items SET n = 5e-324 WHERE id = 1")
        db.execute("DELETE FROM items WHERE id = 2")
    records = rows(project, "stream", 4)
    assert [r["event"] for r in records] == ["INSERT", "INSERT", "MODIFY", "REMOVE"]
    assert records[0]["keys"] == {"id": "1"} and records[0]["new"] == {"id": "1", "name": "kettle", "n": "12.5"}
    assert records[1]["new"]["n"] == "1e+300", "out of DynamoDB's range: a string, which boto3 reads"
    assert records[2]["old"]["n"] == "12.5" and records[2]["new"]["n"] == "5e-324"
    assert records[3]["old"] == {"id": "2", "name": "huge", "n": "1e+300"} and records[3]["new"] is None
