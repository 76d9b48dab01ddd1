"""SigV4 on the Invoke API, with the real clients: boto3 and the AWS CLI sign, lambdalite checks."""

from __future__ import annotations

import datetime
import json
import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from botocore.exceptions import ClientError
from serving import StandInWorker, echo, lambda_client, serve

from broker.errors import ConfigError
from broker.registry import load_registry
from sources.http import callers
from sources.http.sigv4 import load_keys
from sources.http.webhook import create_app

ROOT = Path(__file__).resolve().parent.parent
KEY_ID, SECRET = "AKIDLAMBDALITE01", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY"
KEYS = {KEY_ID: SECRET, "AKIDSECOND": "another-secret"}
TOML = """
[functions.echo]
handler = "handlers.echo.handler"
timeout = 2
"""


@pytest.fixture
def registry(project: Path):  # type: ignore[no-untyped-def]
    (project / "lambdalite.toml").write_text(TOML)
    return load_registry(project / "lambdalite.toml")


def client(url: str, key_id: str = KEY_ID, secret: str = SECRET):  # type: ignore[no-untyped-def]
    return lambda_client(url, key_id, secret, read_timeout=30)


def signed_headers(url: str, body: bytes, when: datetime.datetime, secret: str = SECRET) -> dict[str, str]:
    """What botocore's signer puts on a request signed at ``when`` (an old signature, replayed)."""
    request = AWSRequest(method="POST", url=url, data=body, headers={"X-Amz-Invocation-Type": "Event"})
    request.context["timestamp"] = when.strftime("%Y%m%dT%H%M%SZ")
    auth = SigV4Auth(Credentials(KEY_ID, secret), "lambda", "us-east-1")
    request.headers["X-Amz-Date"] = request.context["timestamp"]
    signature = auth.signature(auth.string_to_sign(request, auth.canonical_request(request)), request)
    scope = auth.credential_scope(request)
    names = auth.signed_headers(auth.headers_to_sign(request))
    request.headers["Authorization"] = (f"AWS4-HMAC-SHA256 Credential={KEY_ID}/{scope}, SignedHeaders={names}, "
                                        f"Signature={signature}")
    return dict(request.headers.items())


def test_boto3_with_the_configured_keys_invokes(registry, redis_url: str) -> None:
    with serve(create_app(registry, redis_url, access_keys=KEYS, sync_margin=3)) as url, \
            StandInWorker(redis_url, "echo", echo) as worker:
        got = client(url).invoke(FunctionName="echo", Payload=json.dumps({"n": 1}).encode())
        assert got["StatusCode"] == 200 and json.loads(got["Payload"].read()) == {"echo": {"n": 1}}
        arn = "arn:aws:lambda:us-east-1:000000000000:function:echo"  # percent-encoded in the signed path
        got = client(url, "AKIDSECOND", "another-secret").invoke(FunctionName=arn, Payload=b"[]")
        assert json.loads(got["Payload"].read()) == {"echo": []}
        queued = client(url).invoke(FunctionName="echo", InvocationType="Event", Payload=b'{"q": 1}')
        assert queued["StatusCode"] == 202
        # a signed GET with a query string: ListFunctions with MaxItems
        listed = client(url).list_functions(MaxItems=5)
        assert [f["FunctionName"] for f in listed["Functions"]] == ["echo"]
        assert len(worker.seen) >= 2


@pytest.mark.parametrize("key_id, secret, error_type", [
    (KEY_ID, "not-the-secret", "InvalidSignatureException"),
    ("AKIDUNKNOWN", SECRET, "UnrecognizedClientException"),
])
def test_wrong_secret_or_unknown_key_is_403_in_lambdas_shape(registry, redis_url: str, r, key_id: str,
                                                             secret: str, error_type: str) -> None:
    with serve(create_app(registry, redis_url, access_keys=KEYS)) as url:
        with pytest.raises(ClientError) as info:
            client(url, key_id, secret).invoke(FunctionName="echo", InvocationType="Event", Payload=b"{}")
        error = info.value.response
        assert error["ResponseMetadata"]["HTTPStatusCode"] == 403
        assert error["Error"]["Code"] == error_type
        assert error["Error"]["Message"] in ("The security token included in the request is invalid.",
                                             "The request signature we calculated does not match the signature "
                                             "you provided. Check your AWS Secret Access Key and signing method. "
                                             "Consult the service documentation for details.")
        assert r.dbsize() == 0  # nothing stored


def test_no_signature_and_an_old_one_are_403(registry, redis_url: str, r) -> None:
    with serve(create_app(registry, redis_url, access_keys=KEYS)) as url, httpx.Client() as http:
        path = f"{url}/2015-03-31/functions/echo/invocations"
        bare = http.post(path, content=b"{}", headers={"X-Amz-Invocation-Type": "Event"})
        assert bare.status_code == 403
        assert bare.headers["x-amzn-errortype"] == "MissingAuthenticationTokenException"
        assert bare.json() == {"message": "Missing Authentication Token"}

        now = datetime.datetime.now(datetime.UTC).replace(tzinfo=None)
        fresh = http.post(path, content=b"{}", headers=signed_headers(path, b"{}", now))
        assert fresh.status_code == 202, fresh.text  # the same signing, made now, is accepted
        ten = datetime.timedelta(minutes=10)
        old = http.post(path, content=b"{}", headers=signed_headers(path, b"{}", now - ten))
        assert old.status_code == 403 and old.headers["x-amzn-errortype"] == "InvalidSignatureException"
        assert old.json()["message"].startswith("Signature expired: ")
        assert "is now earlier than" in old.json()["message"]
        ahead = http.post(path, content=b"{}", headers=signed_headers(path, b"{}", now + ten))
        assert ahead.status_code == 403 and "not yet current" in ahead.json()["message"]
        # A signed request whose body was changed on the way
        tampered = http.post(path, content=b'{"x": 1}', headers=signed_headers(path, b"{}", now))
        assert tampered.status_code == 403 and tampered.headers["x-amzn-errortype"] == "InvalidSignatureException"
        # Bearer tokens are refused when only keys are configured; a bearer token configured beside them works
        bearer = http.post(path, content=b"{}", headers={"Authorization": "Bearer x", "X-Amz-Invocation-Type": "Event"})
        assert bearer.status_code == 403
    with serve(create_app(registry, redis_url, access_keys=KEYS, token="tok")) as url, httpx.Client() as http:
        path = f"{url}/2015-03-31/functions/echo/invocations"
        ok = http.post(path, content=b"{}", headers={"Authorization": "Bearer tok", "X-Amz-Invocation-Type": "Event"})
        assert ok.status_code == 202
        assert client(url).invoke(FunctionName="echo", InvocationType="Event", Payload=b"{}")["StatusCode"] == 202


def aws_cli(url: str, *args: str, key_id: str = KEY_ID, secret: str = SECRET,
            cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(AWS_ACCESS_KEY_ID=key_id, AWS_SECRET_ACCESS_KEY=secret, AWS_DEFAULT_REGION="us-east-1",
               AWS_CONFIG_FILE="/dev/null", AWS_SHARED_CREDENTIALS_FILE="/dev/null", AWS_MAX_ATTEMPTS="1")
    aws = str(Path(sys.executable).parent / "aws")
    return subprocess.run([aws, "--endpoint-url", url, "lambda", *args], capture_output=True, text=True,
                          timeout=60, env=env, cwd=cwd)


def test_aws_cli_with_the_configured_keys_and_with_a_wrong_secret(registry, redis_url: str,
                                                                  tmp_path: Path) -> None:
    with serve(create_app(registry, redis_url, access_keys=KEYS, sync_margin=3)) as url, \
            StandInWorker(redis_url, "echo", echo):
        out = tmp_path / "out.json"
        done = aws_cli(url, "invoke", "--function-name", "echo", "--payload", '{"from": "cli"}', str(out))
        assert done.returncode == 0, done.stderr
        assert json.loads(done.stdout)["StatusCode"] == 200
        assert json.loads(out.read_text()) == {"echo": {"from": "cli"}}
        listed = aws_cli(url, "list-functions")
        assert listed.returncode == 0, listed.stderr
        assert [f["FunctionName"] for f in json.loads(listed.stdout)["Functions"]] == ["echo"]
        wrong = aws_cli(url, "invoke", "--function-name", "echo", str(out), secret="wrong")
        assert wrong.returncode != 0
        assert "InvalidSignatureException" in wrong.stderr, wrong.stderr


def test_metrics_and_openapi_need_credentials_beyond_loopback(registry, redis_url: str) -> None:
    # Configured for 0.0.0.0 (served here on loopback): the guard follows the configured address.
    with serve(create_app(registry, redis_url, host="0.0.0.0", access_keys=KEYS, token="tok")) as url, \
            httpx.Client() as http:
        for path in ("/metrics", "/openapi.json"):
            refused = http.get(url + path)
            assert refused.status_code == 403, path
            assert refused.headers["x-amzn-errortype"] == "MissingAuthenticationTokenException"
            assert http.get(url + path, headers={"Authorization": "Bearer tok"}).status_code == 200
        assert http.get(url + "/healthz").status_code == 200  # health checks stay open
    with serve(create_app(registry, redis_url, access_keys=KEYS)) as url, httpx.Client() as http:
        assert http.get(url + "/metrics").status_code == 200  # on loopback they are open, as before


def test_beyond_loopback_without_credentials_is_refused(registry, redis_url: str) -> None:
    with pytest.raises(ConfigError, match="LAMBDALITE_HTTP_HOST=0.0.0.0 is not loopback and no credentials"):
        create_app(registry, redis_url, host="0.0.0.0")
    assert not callers.guard("0.0.0.0", token="tok").open
    assert not callers.guard("0.0.0.0", keys=KEYS).open
    assert callers.guard("::1").open


def test_process_on_all_interfaces_without_credentials_exits_1_with_one_line(registry, redis_url: str,
                                                                             project: Path) -> None:
    env = {**os.environ, "LAMBDALITE_HTTP_HOST": "0.0.0.0", "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-m", "sources.http"], cwd=project, env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    assert done.stderr.count("\n") == 1 and "LAMBDALITE_ACCESS_KEYS" in done.stderr, done.stderr
    assert done.stdout == ""


def test_keys_from_the_variable_and_from_a_credentials_file(tmp_path: Path) -> None:
    creds = tmp_path / "credentials"
    creds.write_text("[default]\naws_access_key_id = AKIDFILE\naws_secret_access_key = file-secret\n\n"
                     "[ci]\naws_access_key_id=AKIDCI\naws_secret_access_key=ci-secret\nregion=eu-west-1\n")
    assert load_keys("AKIDENV:env:secret:with:colons , ", creds) == {
        "AKIDFILE": "file-secret", "AKIDCI": "ci-secret", "AKIDENV": "env:secret:with:colons"}
    for bad in ("nocolon", "AKID:", ":secret", "bad id:secret"):
        with pytest.raises(ConfigError, match="LAMBDALITE_ACCESS_KEYS: entry 1 is not KEY_ID:SECRET"):
            load_keys(bad, None)
    with pytest.raises(ConfigError, match="cannot read"):
        load_keys("", tmp_path / "missing")
    (tmp_path / "empty").write_text("[default]\nregion = us-east-1\n")
    with pytest.raises(ConfigError, match="holds no aws_access_key_id"):
        load_keys("", tmp_path / "empty")
