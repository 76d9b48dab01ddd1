"""End to end with the real scaler and workers: boto3 and a webhook, answered by real handlers."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest
from serving import lambda_client, serve
from stack import Scaler

from broker.registry import load_registry
from sources.http.webhook import create_app

TOML = """
[functions.greet]
handler = "greeting.handler"
timeout = 10

[[functions.greet.triggers]]
source = "http"
path = "/greet/{name}"
methods = ["GET"]

[functions.broken]
handler = "greeting.broken"
timeout = 10
"""
HANDLERS = '''
def handler(event, context):
    if "requestContext" in event:  # through API Gateway
        name = event["pathParameters"]["name"]
        return {"statusCode": 201, "headers": {"x-function": context.function_name},
                "body": f"hello {name}"}
    return {"hello": event.get("name"), "remaining_ms_positive": context.get_remaining_time_in_millis() > 0}


def broken(event, context):
    raise KeyError("nope")
'''


@pytest.mark.timeout(120)
def test_real_worker_answers_boto3_and_a_webhook(project: Path, redis_url: str) -> None:
    (project / "lambdalite.toml").write_text(TOML)
    (project / "greeting.py").write_text(HANDLERS)
    registry = load_registry(project / "lambdalite.toml")
    with Scaler(project), serve(create_app(registry, redis_url)) as url:
        client = lambda_client(url)
        got = client.invoke(FunctionName="greet", Payload=json.dumps({"name": "ada"}).encode())
        assert "FunctionError" not in got, got["Payload"].read()
        assert json.loads(got["Payload"].read()) == {"hello": "ada", "remaining_ms_positive": True}

        failed = client.invoke(FunctionName="broken", Payload=b"{}")
        assert failed["FunctionError"] == "Unhandled"
        error = json.loads(failed["Payload"].read())
        assert error["errorType"] == "KeyError" and "nope" in error["errorMessage"]

        page = httpx.get(f"{url}/greet/grace", timeout=30)
        assert page.status_code == 201 and page.text == "hello grace"
        assert page.headers["x-function"] == "greet"
