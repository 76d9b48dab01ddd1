"""Every sandbox, Python and command alike, has Lambda's runtime variables and its function's own
``environment`` (set before the handler module is imported); reserved names are refused with one
line; one region setting is used by the variables, the context's ARN and the event records; a
module-level ``boto3.client("dynamodb")`` passes ``lambdalite check`` and runs."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from broker import environment
from tests.stack import Scaler, cli, invoke

HANDLERS = '''
import json, os, sys, time

import boto3

AT_IMPORT = {k: os.environ.get(k) for k in ("TABLE_NAME", "API_SECRET", "AWS_REGION")}
DYNAMODB = boto3.client("dynamodb")  # as nearly every real handler starts


def env(event, context):
    names = ["AWS_REGION", "AWS_DEFAULT_REGION", "AWS_LAMBDA_FUNCTION_NAME", "AWS_LAMBDA_FUNCTION_VERSION",
             "AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "AWS_LAMBDA_LOG_GROUP_NAME", "AWS_LAMBDA_LOG_STREAM_NAME",
             "AWS_LAMBDA_INITIALIZATION_TYPE", "_HANDLER", "LAMBDA_TASK_ROOT", "LAMBDA_RUNTIME_DIR",
             "AWS_EXECUTION_ENV", "TZ", "TMPDIR", "TABLE_NAME", "API_SECRET"]
    return {
        "env": {k: os.environ.get(k) for k in names},
        "stack_settings": sorted(k for k in os.environ if k.startswith("LAMBDALITE_")),
        "at_import": AT_IMPORT,
        "arn": context.invoked_function_arn,
        "log_stream": context.log_stream_name,
        "dynamodb_region": DYNAMODB.meta.region_name,
        "utc_offset": time.localtime().tm_gmtoff,
    }
'''

COMMAND = ("import json, os, sys; json.load(sys.stdin); "
           "print(json.dumps({k: v for k, v in os.environ.items() if k.startswith(('AWS_', 'LAMBDA_', '_HANDLER'))"
           " or k in ('TZ', 'GREETING')}))")

FUNCTIONS = f'''
[functions.env]
handler = "lambda_env.env"
memory = 192
environment = {{ TABLE_NAME = "orders", API_SECRET = {{ from_env = "STACK_SECRET" }} }}
[functions.cmd]
command = ["{sys.executable}", "-c", {json.dumps(COMMAND)}]
environment = {{ GREETING = "hi" }}
'''


@pytest.fixture
def stack(project: Path, redis_url: str) -> Iterator[Scaler]:
    (project / "lambda_env.py").write_text(HANDLERS)
    (project / "lambdalite.toml").write_text(FUNCTIONS)
    with Scaler(project, LAMBDALITE_REGION="eu-west-3", STACK_SECRET="s3cr3t",
                LAMBDALITE_HTTP_TOKEN="stack-only") as scaler:
        yield scaler


def test_python_handlers_get_lambdas_variables_and_their_own_before_import(stack: Scaler, redis_url: str,
                                                                          project: Path) -> None:
    out = invoke(redis_url, project, "env", {})
    assert out.ok, (out, stack.output())
    res = out.result
    env = res["env"]
    assert env["AWS_REGION"] == env["AWS_DEFAULT_REGION"] == "eu-west-3"
    assert env["AWS_LAMBDA_FUNCTION_NAME"] == "env" and env["AWS_LAMBDA_FUNCTION_VERSION"] == "$LATEST"
    assert env["AWS_LAMBDA_FUNCTION_MEMORY_SIZE"] == "192"
    assert env["AWS_LAMBDA_LOG_GROUP_NAME"] == "/aws/lambda/env"
    assert env["AWS_LAMBDA_LOG_STREAM_NAME"] == res["log_stream"] and "[$LATEST]" in res["log_stream"]
    assert env["AWS_LAMBDA_INITIALIZATION_TYPE"] == "on-demand"
    assert env["_HANDLER"] == "lambda_env.env"
    assert env["LAMBDA_TASK_ROOT"] == str(project.resolve())
    assert env["LAMBDA_RUNTIME_DIR"] == sys.prefix
    assert env["AWS_EXECUTION_ENV"] == f"AWS_Lambda_python{sys.version_info.major}.{sys.version_info.minor}"
    assert env["TZ"] == ":UTC" and res["utc_offset"] == 0
    assert env["TMPDIR"] == "/tmp"
    assert env["TABLE_NAME"] == "orders" and env["API_SECRET"] == "s3cr3t"
    assert res["at_import"] == {"TABLE_NAME": "orders", "API_SECRET": "s3cr3t", "AWS_REGION": "eu-west-3"}
    assert res["stack_settings"] == [], "the stack's own LAMBDALITE_* settings (tokens) never reach a handler"
    assert res["arn"] == "arn:aws:lambda:eu-west-3:000000000000:function:env"
    assert res["dynamodb_region"] == "eu-west-3", "a module-level boto3 client finds its region"


def test_command_functions_get_the_same_variables(stack: Scaler, redis_url: str, project: Path) -> None:
    out = invoke(redis_url, project, "cmd", {"x": 1})
    assert out.ok, (out, stack.output())
    env = out.result
    assert env["AWS_REGION"] == env["AWS_DEFAULT_REGION"] == "eu-west-3"
    assert env["AWS_LAMBDA_FUNCTION_NAME"] == "cmd" and env["AWS_LAMBDA_FUNCTION_MEMORY_SIZE"] == "128"
    assert env["AWS_LAMBDA_LOG_GROUP_NAME"] == "/aws/lambda/cmd" and env["TZ"] == ":UTC"
    assert env["_HANDLER"].startswith(sys.executable) and env["LAMBDA_TASK_ROOT"] == str(project.resolve())
    assert env["GREETING"] == "hi"
    assert "AWS_EXECUTION_ENV" not in env, "a command is not the Python runtime"


def test_lambdalite_check_imports_a_module_level_boto3_client(project: Path) -> None:
    (project / "lambda_env.py").write_text(HANDLERS)
    (project / "lambdalite.toml").write_text(FUNCTIONS)
    done = cli(project, "check", STACK_SECRET="x")
    assert done.returncode == 0, done.stderr
    assert "2 function(s) OK" in done.stdout


@pytest.mark.parametrize("key", ["AWS_REGION", "AWS_LAMBDA_FUNCTION_NAME", "_HANDLER", "LAMBDA_TASK_ROOT",
                                 "AWS_SECRET_ACCESS_KEY", "TMPDIR", "LAMBDALITE_REDIS_URL", "9LIVES"])
def test_reserved_or_invalid_names_are_refused_with_one_line(project: Path, key: str) -> None:
    (project / "lambdalite.toml").write_text(
        f'[functions.f]\nhandler = "x.handler"\nenvironment = {{ OK = "1", {key} = "v" }}\n')
    done = cli(project, "check")
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, lines
    assert "lambdalite.toml" in lines[0] and "function 'f'" in lines[0] and "environment" in lines[0]
    assert repr(key) in lines[0], lines[0]


def test_a_from_env_variable_that_is_not_set_is_refused_with_one_line(project: Path) -> None:
    (project / "lambda_env.py").write_text(HANDLERS)
    (project / "lambdalite.toml").write_text(FUNCTIONS)
    done = cli(project, "check")  # STACK_SECRET unset
    assert done.returncode == 1
    assert done.stderr.strip() == ("lambdalite: lambdalite.toml: function 'env': environment.API_SECRET: from_env "
                                   "'STACK_SECRET' is not set in the stack's environment")


def test_one_region_for_arns_and_records(monkeypatch: pytest.MonkeyPatch) -> None:
    from sources.sqlite import dynamodb
    from workers import context

    monkeypatch.setenv("LAMBDALITE_REGION", "ap-south-1")
    environment.region.cache_clear()
    try:
        assert context.function_arn("f") == "arn:aws:lambda:ap-south-1:000000000000:function:f"
        assert ":ap-south-1:" in dynamodb.stream_arn("db", "t")
        assert environment.function_arn("f") == context.function_arn("f")
    finally:
        environment.region.cache_clear()
