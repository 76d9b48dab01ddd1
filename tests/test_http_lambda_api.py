"""The Invoke API and Lambda's reads, end to end: boto3 and the AWS CLI against real workers."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import httpx
import pytest
import serving
from botocore.exceptions import ClientError
from serving import serve
from stack import Scaler
from test_http_sigv4 import KEY_ID, KEYS, SECRET, aws_cli

from broker.registry import load_registry
from sources.http.webhook import create_app

TOML = """
[functions.tools]
handler = "tools.handler"
timeout = 10
memory = 256

[functions.broken]
handler = "tools.broken"
timeout = 10

[[functions.broken.triggers]]
source = "sqlite"
database = "app.db"
table = "orders"
batch_size = 25

[[functions.broken.triggers]]
source = "files"
bucket = "uploads"
"""
HANDLERS = '''
import logging
import os
import sys

logging.getLogger().setLevel(logging.INFO)


def handler(event, context):
    if event.get("print"):
        print(event["print"])
        logging.getLogger("app").warning("logged %s", event["print"])
        os.system("echo from-a-child-process")
        sys.stderr.write("x" * event.get("stderr", 0))
    if event.get("big"):
        return "y" * event["big"]
    cc = context.client_context
    if cc is None:
        return {"client_context": None}
    return {"custom": cc.custom, "env": cc.env, "app_title": cc.client.app_title,
            "installation_id": cc.client.installation_id}


def broken(event, context):
    return inner(event)


def inner(event):
    raise ValueError("broken on purpose")
'''


@pytest.fixture
def stack(project: Path, redis_url: str):  # type: ignore[no-untyped-def]
    (project / "lambdalite.toml").write_text(TOML)
    (project / "tools.py").write_text(HANDLERS)
    (project / "buckets" / "uploads").mkdir()
    registry = load_registry(project / "lambdalite.toml")
    with Scaler(project), serve(create_app(registry, redis_url, access_keys=KEYS, region="eu-west-1")) as url:
        yield url


def lambda_client(url: str):  # type: ignore[no-untyped-def]
    return serving.lambda_client(url, KEY_ID, SECRET)


@pytest.mark.timeout(120)
def test_log_type_tail_returns_the_end_of_the_invocations_log(stack: str, tmp_path: Path) -> None:
    got = lambda_client(stack).invoke(FunctionName="tools", LogType="Tail",
                                      Payload=json.dumps({"print": "hello-from-print"}).encode())
    assert "FunctionError" not in got, got["Payload"].read()
    log = base64.b64decode(got["LogResult"]).decode()
    lines = log.splitlines()
    assert lines[0].startswith("START RequestId: " + got["ResponseMetadata"]["RequestId"])
    assert "hello-from-print" in lines and "from-a-child-process" in lines
    assert any("logged hello-from-print" in line for line in lines)
    assert lines[-2].startswith("END RequestId: ") and lines[-1].startswith("REPORT RequestId: ")
    without = lambda_client(stack).invoke(FunctionName="tools", Payload=b'{"print": "quiet"}')
    assert "LogResult" not in without

    # More than 4 KB written: the last 4 KB come back, ending with the REPORT line
    big = lambda_client(stack).invoke(FunctionName="tools", LogType="Tail",
                                      Payload=json.dumps({"print": "p", "stderr": 10_000}).encode())
    raw = base64.b64decode(big["LogResult"])
    assert len(raw) == 4096 and raw.decode().splitlines()[-1].startswith("REPORT RequestId: ")

    # The AWS CLI prints the base64 log result, as against AWS
    out = tmp_path / "out.json"
    done = aws_cli(stack, "invoke", "--function-name", "tools", "--log-type", "Tail",
                   "--payload", '{"print": "via-the-cli"}', str(out))
    assert done.returncode == 0, done.stderr
    assert "via-the-cli" in base64.b64decode(json.loads(done.stdout)["LogResult"]).decode()


@pytest.mark.timeout(120)
def test_client_context_reaches_the_handler(stack: str) -> None:
    context = {"client": {"installation_id": "inst-1", "app_title": "Demo"}, "custom": {"tenant": "t1"},
               "env": {"locale": "en"}}
    encoded = base64.b64encode(json.dumps(context).encode()).decode()
    got = lambda_client(stack).invoke(FunctionName="tools", ClientContext=encoded, Payload=b"{}")
    assert json.loads(got["Payload"].read()) == {"custom": {"tenant": "t1"}, "env": {"locale": "en"},
                                                 "app_title": "Demo", "installation_id": "inst-1"}
    plain = lambda_client(stack).invoke(FunctionName="tools", Payload=b"{}")
    assert json.loads(plain["Payload"].read()) == {"client_context": None}
    with pytest.raises(ClientError) as info:
        lambda_client(stack).invoke(FunctionName="tools", ClientContext="not base64 json!", Payload=b"{}")
    assert info.value.response["Error"]["Code"] == "InvalidRequestContentException"


@pytest.mark.timeout(120)
def test_error_payload_has_the_python_runtimes_fields(stack: str) -> None:
    got = lambda_client(stack).invoke(FunctionName="broken", Payload=b"{}")
    assert got["FunctionError"] == "Unhandled"
    error = json.loads(got["Payload"].read())
    assert list(error) == ["errorMessage", "errorType", "requestId", "stackTrace"]
    assert error["errorMessage"] == "broken on purpose" and error["errorType"] == "ValueError"
    assert error["requestId"] == got["ResponseMetadata"]["RequestId"]
    frames = error["stackTrace"]
    assert len(frames) == 2 and all(f.startswith('  File "') for f in frames), frames
    assert "in broken" in frames[0] and "in inner" in frames[1] and 'raise ValueError("broken on purpose")' in frames[1]


@pytest.mark.timeout(120)
def test_a_response_over_6_mb_is_a_function_error(stack: str) -> None:
    got = lambda_client(stack).invoke(FunctionName="tools", Payload=json.dumps({"big": 6 * 1024 * 1024}).encode())
    assert got["StatusCode"] == 200 and got["FunctionError"] == "Unhandled"
    error = json.loads(got["Payload"].read())
    assert error["errorType"] == "Function.ResponseSizeTooLarge"
    assert error["errorMessage"] == ("Response payload size (6291458 bytes) exceeded maximum allowed payload size "
                                     "(6291456 bytes).")
    fits = lambda_client(stack).invoke(FunctionName="tools", Payload=json.dumps({"big": 6 * 1024 * 1024 - 2}).encode())
    assert "FunctionError" not in fits and len(fits["Payload"].read()) == 6 * 1024 * 1024


# One of botocore's connections here is freed only by the collector (it sits in a reference cycle,
# likely with an error's traceback, out of the pool client.close() empties), and its socket then
# warns unclosed when conftest.py collects at the test's end: botocore's, not lambdalite's.
@pytest.mark.filterwarnings("ignore:unclosed <socket.socket:ResourceWarning")
def test_a_qualifier_other_than_latest_is_not_found(project: Path, redis_url: str) -> None:
    (project / "lambdalite.toml").write_text(TOML)
    registry = load_registry(project / "lambdalite.toml")
    with serve(create_app(registry, redis_url, access_keys=KEYS)) as url:
        client = lambda_client(url)
        for kwargs in ({"FunctionName": "tools", "Qualifier": "prod"}, {"FunctionName": "tools:1"},
                       {"FunctionName": "arn:aws:lambda:us-east-1:000000000000:function:tools:live"}):
            with pytest.raises(client.exceptions.ResourceNotFoundException) as info:
                client.invoke(InvocationType="Event", Payload=b"{}", **kwargs)
            assert info.value.response["ResponseMetadata"]["HTTPStatusCode"] == 404
            assert "function:tools:" in info.value.response["Error"]["Message"]
        latest = client.invoke(FunctionName="tools", Qualifier="$LATEST", InvocationType="Event", Payload=b"{}")
        assert latest["StatusCode"] == 202
        with pytest.raises(client.exceptions.ResourceNotFoundException):
            client.get_function(FunctionName="tools", Qualifier="7")


def test_list_and_get_functions_and_event_source_mappings(project: Path, redis_url: str, tmp_path: Path) -> None:
    (project / "lambdalite.toml").write_text(TOML)
    registry = load_registry(project / "lambdalite.toml")
    with serve(create_app(registry, redis_url, access_keys=KEYS, region="eu-west-1")) as url:
        client = lambda_client(url)
        functions = client.list_functions()["Functions"]
        assert [f["FunctionName"] for f in functions] == ["tools", "broken"]
        tools = functions[0]
        assert tools["FunctionArn"] == "arn:aws:lambda:eu-west-1:000000000000:function:tools"
        assert (tools["Handler"], tools["Timeout"], tools["MemorySize"]) == ("tools.handler", 10, 256)
        assert tools["Runtime"].startswith("python3.") and tools["Version"] == "$LATEST"
        assert tools["EphemeralStorage"] == {"Size": 512} and tools["State"] == "Active"
        page = client.list_functions(MaxItems=1)
        assert [f["FunctionName"] for f in page["Functions"]] == ["tools"]
        rest = client.list_functions(MaxItems=1, Marker=page["NextMarker"])
        assert [f["FunctionName"] for f in rest["Functions"]] == ["broken"] and "NextMarker" not in rest

        assert client.get_function(FunctionName="tools")["Configuration"] == tools
        assert client.get_function_configuration(FunctionName="tools")["FunctionArn"] == tools["FunctionArn"]
        with pytest.raises(client.exceptions.ResourceNotFoundException):
            client.get_function_configuration(FunctionName="nope")

        mappings = client.list_event_source_mappings(FunctionName="broken")["EventSourceMappings"]
        arns = [m["EventSourceArn"] for m in mappings]
        assert arns == ["arn:aws:dynamodb:eu-west-1:000000000000:table/orders/stream/lambdalite",
                        "arn:aws:s3:::uploads"]
        assert mappings[0]["BatchSize"] == 25 and mappings[0]["State"] == "Enabled"
        assert client.list_event_source_mappings(FunctionName="tools")["EventSourceMappings"] == []
        assert len(client.list_event_source_mappings()["EventSourceMappings"]) == 2

        # Operations lambdalite does not have: a Lambda-shaped error boto3 can read, never a bare 404
        for call in (lambda: client.list_aliases(FunctionName="tools"),
                     lambda: client.delete_function(FunctionName="tools"),
                     lambda: client.get_function_concurrency(FunctionName="tools")):
            with pytest.raises(ClientError) as info:
                call()
            assert info.value.response["Error"]["Code"] == "UnknownOperationException"
            assert "lambdalite does not implement" in info.value.response["Error"]["Message"]

        listed = aws_cli(url, "list-functions")
        assert listed.returncode == 0, listed.stderr
        assert [f["FunctionName"] for f in json.loads(listed.stdout)["Functions"]] == ["tools", "broken"]
        got = aws_cli(url, "get-function", "--function-name", "tools")
        assert got.returncode == 0 and json.loads(got.stdout)["Configuration"]["Handler"] == "tools.handler"
        missing = aws_cli(url, "get-function", "--function-name", "tools", "--qualifier", "prod")
        assert missing.returncode != 0 and "ResourceNotFoundException" in missing.stderr

        # Unsigned: refused like the Invoke API, before any answer about functions
        assert httpx.get(f"{url}/2015-03-31/functions/").status_code == 403
