"""``provided`` functions: a runtime (its ``bootstrap``) started once per worker and kept warm,
asking for its events over the Lambda Runtime API that its sandbox serves.

Every test runs the real scaler, workers and sandboxes against a real Redis; the runtimes are
real programs: AWS's custom-runtime tutorial (bash and curl), Python's ``awslambdaric`` and
hostile bootstraps.
"""

from __future__ import annotations

import base64
import json
import os
import pwd
import shutil
import stat
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
import redis
from serving import lambda_client, serve

from broker import deadletter, results
from broker.errors import ConfigError
from broker.registry import load_registry
from sources.http.webhook import create_app
from tests.stack import Scaler, cli, publish, status

FIXTURES = Path(__file__).parent / "fixtures"
TUTORIAL = FIXTURES / "runtime_tutorial"
KEY_ID, SECRET = "AKIDRUNTIMEAPI", "runtime-api-secret"

FUNCTIONS = """
[functions.tutorial]
runtime = "provided"
handler = "function.handler"
bootstrap = "bootstrap"
timeout = 10

[functions.tutorial_sh]
runtime = "provided"
handler = "function.handler"
bootstrap = "tutorial_sh/bootstrap"
timeout = 10
retries = 0

[functions.ric]
runtime = "provided.al2023"
handler = "ric_handler.handler"
bootstrap = "ric_bootstrap"
timeout = 20
memory = 256

[functions.hostile]
runtime = "provided"
handler = "unused"
bootstrap = "hostile_bootstrap.py"
timeout = 2
memory = 160
ephemeral_storage = 8
retries = 1
retry_backoff = 0.05

[functions.bad_interpreter]
runtime = "provided"
bootstrap = "bad_interpreter"
retries = 0

[functions.init_fails]
runtime = "provided"
bootstrap = "init_fails.py"
retries = 1
retry_backoff = 0.05
"""

# A runtime in plain Python (the standard library only): its behaviour is chosen by each event.
HOSTILE = r'''#!PYTHON
import json, os, sys, time, urllib.request

API = "http://" + os.environ["AWS_LAMBDA_RUNTIME_API"] + "/2018-06-01/runtime"
hog = []
while True:
    with urllib.request.urlopen(API + "/invocation/next") as r:
        rid = r.headers["Lambda-Runtime-Aws-Request-Id"]
        headers = dict(r.headers)
        event = json.loads(r.read())
    do = event.get("do")
    if do == "hang":
        time.sleep(3600)
    if do == "leak":
        while True:
            hog.append(bytearray(8 * 1024 * 1024))
            time.sleep(0.01)
    if do == "fill_tmp":
        with open("/tmp/filler", "wb") as f:
            while True:
                f.write(b"x" * (1024 * 1024))
                f.flush()
    if do == "exit_now":
        os._exit(7)
    if do == "children":  # one child stays in the runtime's process group, one leaves it
        import subprocess
        kept = subprocess.Popen(["sleep", "600"]).pid
        left = subprocess.Popen(["sleep", "600"], start_new_session=True).pid
        event["kept"], event["left"] = kept, left
    if do == "error":
        req = urllib.request.Request(API + f"/invocation/{rid}/error", method="POST",
                                     data=json.dumps({"errorMessage": "bad input", "errorType": "InputError"}).encode(),
                                     headers={"Lambda-Runtime-Function-Error-Type": "Unhandled"})
        urllib.request.urlopen(req).read()
        continue
    answer = {"pid": os.getpid(), "event": event, "headers": headers,
              "env": {k: os.environ.get(k) for k in ("_HANDLER", "LAMBDA_TASK_ROOT", "AWS_LAMBDA_FUNCTION_NAME",
                                                     "AWS_LAMBDA_RUNTIME_API", "TMPDIR")},
              "cwd": os.getcwd()}
    req = urllib.request.Request(API + f"/invocation/{rid}/response", data=json.dumps(answer).encode(), method="POST")
    urllib.request.urlopen(req).read()
    if do == "exit_after":
        os._exit(0)  # between invocations: the next one gets a fresh runtime
'''

INIT_FAILS = r'''#!PYTHON
import json, os, urllib.request
API = "http://" + os.environ["AWS_LAMBDA_RUNTIME_API"] + "/2018-06-01/runtime"
req = urllib.request.Request(API + "/init/error", method="POST",
                             data=json.dumps({"errorMessage": "no config", "errorType": "Runtime.InitError"}).encode())
urllib.request.urlopen(req).read()
raise SystemExit(1)
'''

RIC_HANDLER = '''
import os
COUNT = 0

def handler(event, context):
    global COUNT
    COUNT += 1
    return {"pid": os.getpid(), "count": COUNT, "event": event, "request_id": context.aws_request_id,
            "remaining": context.get_remaining_time_in_millis(), "arn": context.invoked_function_arn}
'''


def _script(path: Path, text: str) -> None:
    path.write_text(text.replace("PYTHON", sys.executable))
    path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)


def _tutorial(project: Path) -> None:
    """The tutorial's two files in the task root, as its zip lays them out, with the first line of
    ``bootstrap`` naming bash: Amazon Linux's /bin/sh is bash, and the tutorial's ``set -o pipefail``,
    ``source`` and ``function`` need it (Debian's /bin/sh is dash). ``tutorial_sh/bootstrap`` is the
    tutorial's text unchanged."""
    text = (TUTORIAL / "bootstrap").read_text()
    (project / "bootstrap").write_text(text.replace("#!/bin/sh\n", "#!/bin/bash\n", 1))
    shutil.copy(TUTORIAL / "function.sh", project / "function.sh")
    (project / "tutorial_sh").mkdir()
    shutil.copy(TUTORIAL / "bootstrap", project / "tutorial_sh" / "bootstrap")
    for path in (project / "bootstrap", project / "function.sh", project / "tutorial_sh" / "bootstrap"):
        path.chmod(0o755)


@pytest.fixture
def project_files(project: Path) -> Path:
    _tutorial(project)
    _script(project / "hostile_bootstrap.py", HOSTILE)
    _script(project / "init_fails.py", INIT_FAILS)
    _script(project / "ric_bootstrap", f"#!/bin/sh\nexec {sys.executable} -m awslambdaric \"$_HANDLER\"\n")
    (project / "ric_handler.py").write_text(RIC_HANDLER)
    _script(project / "bad_interpreter", "#!/nowhere/interpreter\n")
    (project / "lambdalite.toml").write_text(FUNCTIONS)
    return project


@pytest.fixture
def stack(project_files: Path, redis_url: str) -> Iterator[Scaler]:
    with Scaler(project_files, LAMBDALITE_IDLE_TIMEOUT="60") as scaler:
        yield scaler
    for proc in psutil.Process().children(recursive=True):
        if "bootstrap" in " ".join(proc.cmdline()):
            pytest.fail(f"a runtime outlived its stack: {proc.cmdline()}")


def _lambda(url: str):  # type: ignore[no-untyped-def]
    return lambda_client(url, KEY_ID, SECRET)


def _invoke(url: str, project: Path, function: str, payload: object) -> tuple[str, results.Outcome]:
    """A synchronous invocation and its request id (the event's id)."""
    event = publish(url, project, function, payload, sync=True)
    # A socket timeout longer than the wait: redis-py's default (5 s) is shorter than a cold start under load.
    outcome = results.wait(redis.Redis.from_url(url, socket_timeout=90), event.id, 60)
    assert outcome is not None, f"no outcome for {function}"
    return event.id, outcome


def _report(log: str, request_id: str) -> list[str]:
    line = next(x for x in log.splitlines() if x.startswith(f"REPORT RequestId: {request_id}"))
    return line.split("\t")


def test_the_tutorial_bootstrap_through_invoke_and_the_invoke_api(stack: Scaler, project_files: Path,
                                                                  redis_url: str) -> None:
    event_file = project_files / "event.json"
    event_file.write_text('{"text":"Hello"}')
    done = cli(project_files, "invoke", "tutorial", "--event", str(event_file), "--wait", "30")
    assert done.returncode == 0, done.stdout + stack.output()
    assert json.loads(done.stdout) == "Echoing request: '{\"text\":\"Hello\"}'"
    registry = load_registry(project_files / "lambdalite.toml")
    with serve(create_app(registry, redis_url, access_keys={KEY_ID: SECRET})) as url:
        got = _lambda(url).invoke(FunctionName="tutorial", Payload=b'{"text":"again"}')
        context = {"custom": {"tenant": "t1"}, "env": {"locale": "en"}, "client": {"app_title": "app"}}
        echoed = _lambda(url).invoke(FunctionName="hostile", Payload=b'{"n": 3}',
                                     ClientContext=base64.b64encode(json.dumps(context).encode()).decode())
    assert got["StatusCode"] == 200 and "FunctionError" not in got
    assert json.loads(got["Payload"].read()) == "Echoing request: '{\"text\":\"again\"}'"
    headers = {k.lower(): v for k, v in json.loads(echoed["Payload"].read())["headers"].items()}
    assert json.loads(headers["lambda-runtime-client-context"])["custom"] == {"tenant": "t1"}
    log = stack.output()
    assert '{"text":"Hello"}' in log, "the handler's stderr goes to the function's log"
    inits = [line for line in log.splitlines() if line.startswith("REPORT") and "Init Duration" in line]
    assert len(inits) == 2, "one runtime per function served its invocations: one cold start each"


def test_the_verbatim_tutorial_under_dash_is_an_exit_error(stack: Scaler, project_files: Path,
                                                          redis_url: str) -> None:
    if Path("/bin/sh").resolve().name != "dash":
        _, out = _invoke(redis_url, project_files, "tutorial_sh", {"text": "Hello"})
        assert out.ok and out.result == "Echoing request: '{\"text\":\"Hello\"}'", out
        return
    _, out = _invoke(redis_url, project_files, "tutorial_sh", {"text": "Hello"})
    assert out.error["errorType"] == "Runtime.ExitError" and "exit status 2" in out.error["errorMessage"], out
    assert "pipefail" in stack.output(), "the shell's own complaint is in the log"


def test_runtime_api_headers_environment_and_warmth(stack: Scaler, project_files: Path, redis_url: str) -> None:
    first_id, first = _invoke(redis_url, project_files, "hostile", {"n": 1})
    assert first.ok, first
    second_id, second = _invoke(redis_url, project_files, "hostile", {"n": 2})
    assert second.ok, second
    res = second.result
    assert res["event"] == {"n": 2}
    assert res["pid"] == first.result["pid"], "the same runtime process serves consecutive invocations"
    headers = {k.lower(): v for k, v in res["headers"].items()}
    assert headers["lambda-runtime-invoked-function-arn"].endswith(":function:hostile")
    assert headers["lambda-runtime-trace-id"].startswith("Root=1-")
    deadline_ms = int(headers["lambda-runtime-deadline-ms"])
    assert time.time() * 1000 - 5000 < deadline_ms <= time.time() * 1000 + 2000
    assert headers["lambda-runtime-aws-request-id"]
    env = res["env"]
    assert env["_HANDLER"] == "unused" and env["AWS_LAMBDA_FUNCTION_NAME"] == "hostile"
    assert env["LAMBDA_TASK_ROOT"] == str(project_files.resolve()) == res["cwd"]
    assert env["AWS_LAMBDA_RUNTIME_API"].startswith("127.0.0.1:") and env["TMPDIR"] == "/tmp"
    log = stack.output()
    assert "Init Duration" in " ".join(_report(log, first_id))
    assert "Init Duration" not in " ".join(_report(log, second_id))


def test_an_error_posted_by_the_runtime_is_the_functions_error(stack: Scaler, project_files: Path,
                                                                redis_url: str) -> None:
    _, warm = _invoke(redis_url, project_files, "hostile", {})
    _, out = _invoke(redis_url, project_files, "hostile", {"do": "error"})
    assert out.status == "failed" and out.error == {"errorMessage": "bad input", "errorType": "InputError"}, out
    _, again = _invoke(redis_url, project_files, "hostile", {})
    assert again.ok and again.result["pid"] == warm.result["pid"], "an error is not a crash: the runtime stays"


@pytest.mark.parametrize(("do", "error_type"), [
    ("hang", "Sandbox.Timedout"),
    ("leak", "Runtime.OutOfMemory"),
    ("fill_tmp", "Runtime.EphemeralStorageExceeded"),
    ("exit_now", "Runtime.ExitError"),
])
def test_a_hostile_runtime_is_contained(stack: Scaler, project_files: Path, redis_url: str, r: redis.Redis,
                                        do: str, error_type: str) -> None:
    _, before = _invoke(redis_url, project_files, "hostile", {})
    assert before.ok, before
    event = publish(redis_url, project_files, "hostile", {"do": do})
    deadline = time.monotonic() + 60
    while not deadletter.entries(r, "hostile") and time.monotonic() < deadline:
        time.sleep(0.05)
    [entry] = deadletter.entries(r, "hostile")
    assert entry["id"] == event.id and entry["attempts"] == 2, entry
    assert entry["error"]["errorType"] == error_type, entry
    if do == "exit_now":
        assert "exit status 7" in entry["error"]["errorMessage"]
    after_id, after = _invoke(redis_url, project_files, "hostile", {})
    assert after.ok, after
    assert after.result["pid"] != before.result["pid"], "a fresh runtime serves the next invocation"
    assert not psutil.pid_exists(before.result["pid"]) or \
        psutil.Process(before.result["pid"]).status() == psutil.STATUS_ZOMBIE
    log = stack.output()
    assert "Init Duration" in " ".join(_report(log, after_id)), "a fresh runtime is a cold start"


def test_a_runtimes_group_stays_warm_and_a_process_that_left_it_goes(stack: Scaler, project_files: Path,
                                                                      redis_url: str) -> None:
    _, out = _invoke(redis_url, project_files, "hostile", {"do": "children"})
    assert out.ok, out
    kept, left = out.result["event"]["kept"], out.result["event"]["left"]

    def gone(pid: int) -> bool:
        return not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE

    deadline = time.monotonic() + 10
    while not gone(left):
        assert time.monotonic() < deadline, "a process that left the runtime's group outlived the invocation"
        time.sleep(0.02)
    _, again = _invoke(redis_url, project_files, "hostile", {})
    assert again.ok and again.result["pid"] == out.result["pid"]
    assert not gone(kept), "the runtime's own child lives on between invocations, as the runtime does"


def test_a_runtime_that_exits_between_invocations(stack: Scaler, project_files: Path, redis_url: str) -> None:
    _, first = _invoke(redis_url, project_files, "hostile", {"do": "exit_after"})
    assert first.ok, first
    pid = first.result["pid"]
    deadline = time.monotonic() + 10
    while psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    second_id, second = _invoke(redis_url, project_files, "hostile", {})
    assert second.ok, second
    assert second.result["pid"] != pid
    assert "Init Duration" in " ".join(_report(stack.output(), second_id))


def test_init_error_is_reported_retried_and_dead_lettered(stack: Scaler, project_files: Path, redis_url: str,
                                                          r: redis.Redis) -> None:
    _, out = _invoke(redis_url, project_files, "init_fails", {})
    assert out.error["errorType"] == "Runtime.InitError" and out.error["errorMessage"] == "no config", out
    event = publish(redis_url, project_files, "init_fails", {"async": True})
    deadline = time.monotonic() + 30
    while not deadletter.entries(r, "init_fails") and time.monotonic() < deadline:
        time.sleep(0.05)
    [entry] = deadletter.entries(r, "init_fails")
    assert entry["id"] == event.id and entry["attempts"] == 2
    assert entry["error"]["errorType"] == "Runtime.InitError"
    row = status(project_files)["init_fails"]
    assert row["dead"] == 1 and row["failed"] >= 3


def test_a_bootstrap_that_cannot_start_is_an_invalid_entrypoint(stack: Scaler, project_files: Path,
                                                                 redis_url: str) -> None:
    _, out = _invoke(redis_url, project_files, "bad_interpreter", {})
    assert out.error["errorType"] == "Runtime.InvalidEntrypoint", out
    assert "cannot start the bootstrap 'bad_interpreter'" in out.error["errorMessage"]
    _, again = _invoke(redis_url, project_files, "bad_interpreter", {})
    assert again.error["errorType"] == "Runtime.InvalidEntrypoint", "and again: nothing is left half started"


@pytest.mark.timeout(180)
def test_awslambdaric_runs_a_python_handler_warm(stack: Scaler, project_files: Path, redis_url: str) -> None:
    _, first = _invoke(redis_url, project_files, "ric", {"a": 1})
    assert first.ok, first
    second_id, second = _invoke(redis_url, project_files, "ric", {"a": 2})
    assert second.ok, second
    assert second.result["pid"] == first.result["pid"], "awslambdaric's process stays warm"
    assert (first.result["count"], second.result["count"]) == (1, 2), "module state lives on"
    assert second.result["event"] == {"a": 2} and second.result["request_id"] == second_id
    assert 0 < second.result["remaining"] <= 20_000
    assert second.result["arn"].endswith(":function:ric")


@pytest.mark.parametrize(("text", "expected"), [
    ('runtime = "provided"\n', "runtime 'provided' needs a 'bootstrap'"),
    ('runtime = "provided"\nbootstrap = "b"\ncommand = ["x"]\n', "give 'bootstrap', not 'command'"),
    ('bootstrap = "b"\nhandler = "a.b"\n', "'bootstrap' needs runtime = \"provided\""),
    ('runtime = "python3.12"\nbootstrap = "b"\n', "function 'f': runtime: "),
    ('handler = "not a handler"\n', "function 'f': handler: "),
    ('handler = "function"\n', "'function' is not a Python handler"),
])
def test_provided_functions_in_the_registry_are_checked(project: Path, text: str, expected: str) -> None:
    path = project / "lambdalite.toml"
    path.write_text("[functions.f]\n" + text)
    with pytest.raises(ConfigError) as info:
        load_registry(path)
    assert str(path) in str(info.value) and expected in str(info.value), str(info.value)


def test_lambdalite_check_wants_an_executable_bootstrap(project: Path) -> None:
    toml = '[functions.f]\nruntime = "provided"\nhandler = "x"\nbootstrap = "rt/boot"\n'
    (project / "lambdalite.toml").write_text(toml)
    done = cli(project, "check")
    assert done.returncode == 1 and "function 'f': bootstrap:" in done.stderr and "is not a file" in done.stderr, done
    (project / "rt").mkdir()
    (project / "rt" / "boot").write_text("#!/bin/sh\n")
    done = cli(project, "check")
    assert done.returncode == 1 and "is not executable" in done.stderr, done
    (project / "rt" / "boot").chmod(0o755)
    done = cli(project, "check")
    assert done.returncode == 0, done.stderr
    fn = load_registry(project / "lambdalite.toml").get("f")
    assert fn.provided and not fn.python and fn.bootstrap_path(project / "lambdalite.toml") == project / "rt" / "boot"


WHOAMI = r'''#!/bin/bash
set -euo pipefail
API="http://${AWS_LAMBDA_RUNTIME_API}/2018-06-01/runtime/invocation"
while true
do
  HEADERS="$(mktemp)"
  curl -sS -o /dev/null -D "$HEADERS" "$API/next"
  REQUEST_ID=$(grep -Fi Lambda-Runtime-Aws-Request-Id "$HEADERS" | tr -d '[:space:]' | cut -d: -f2)
  curl -sS -o /dev/null "$API/$REQUEST_ID/response" -d "{\"uid\": $(id -u), \"pid\": $$, \"tmp\": \"$HEADERS\"}"
done
'''


def test_a_runtime_runs_as_the_sandbox_user(redis_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """As root, the stack's default: the runtime runs as nobody, in its private /tmp (a project
    folder the sandbox user may read: pytest's own temp root is 0700)."""
    if os.geteuid() != 0:
        pytest.skip("the switch to the sandbox user needs a stack running as root")
    folder = Path(tempfile.mkdtemp(prefix="ll-runtime-api-"))
    try:
        folder.chmod(0o755)
        (folder / "buckets").mkdir()
        _tutorial(folder)
        _script(folder / "whoami", WHOAMI)
        (folder / "lambdalite.toml").write_text(
            '[functions.tutorial]\nruntime = "provided"\nhandler = "function.handler"\nbootstrap = "bootstrap"\n'
            '[functions.whoami]\nruntime = "provided"\nbootstrap = "whoami"\n')
        monkeypatch.chdir(folder)
        with Scaler(folder, LAMBDALITE_SANDBOX_USER="nobody") as scaler:
            _, out = _invoke(redis_url, folder, "tutorial", {"text": "Hello"})
            assert out.ok and out.result == "Echoing request: '{\"text\":\"Hello\"}'", (out, scaler.output())
            _, first = _invoke(redis_url, folder, "whoami", {})
            _, second = _invoke(redis_url, folder, "whoami", {})
            assert first.ok and second.ok, (first, second, scaler.output())
            assert first.result["uid"] == pwd.getpwnam("nobody").pw_uid
            assert first.result["pid"] == second.result["pid"], "warm as the sandbox user too"
            assert first.result["tmp"].startswith("/tmp/tmp.")
            assert not Path(first.result["tmp"]).exists(), "its /tmp is its own, not the machine's"
    finally:
        shutil.rmtree(folder, ignore_errors=True)


NODE_HANDLER = """let count = 0;
export const handler = async (event, context) =>
  ({ count: ++count, pid: process.pid, event, id: context.awsRequestId });
"""


@pytest.mark.timeout(180)
def test_nodes_aws_lambda_ric_runs_a_handler_warm(project: Path, redis_url: str) -> None:
    """Node.js's aws-lambda-ric, where it is built: its install compiles a native part and the curl
    it bundles from source, which needs autoconf, automake, libtool and cmake (a fresh machine has
    none of them). NODE_RIC_MODULES names a node_modules folder that holds a built aws-lambda-ric."""
    modules = os.environ.get("NODE_RIC_MODULES")
    if not modules or not (Path(modules) / ".bin" / "aws-lambda-ric").exists():
        pytest.skip("no built aws-lambda-ric (NODE_RIC_MODULES); see docs/runtimes.md")
    shutil.copytree(modules, project / "node_modules", symlinks=True)  # in the task root, as Lambda lays it out
    (project / "app.mjs").write_text(NODE_HANDLER)
    _script(project / "bootstrap", '#!/bin/sh\nexec ./node_modules/.bin/aws-lambda-ric "$_HANDLER"\n')
    (project / "lambdalite.toml").write_text(
        '[functions.node]\nruntime = "provided"\nhandler = "app.handler"\nbootstrap = "bootstrap"\ntimeout = 30\n')
    with Scaler(project, LAMBDALITE_IDLE_TIMEOUT="60") as scaler:
        first_id, first = _invoke(redis_url, project, "node", {"a": 1})
        second_id, second = _invoke(redis_url, project, "node", {"a": 2})
        assert first.ok and second.ok, (first, second, scaler.output())
    assert (first.result["count"], second.result["count"]) == (1, 2), "module state lives on"
    assert first.result["pid"] == second.result["pid"], "the same Node.js process serves both"
    assert second.result == {"count": 2, "pid": first.result["pid"], "event": {"a": 2}, "id": second_id}
