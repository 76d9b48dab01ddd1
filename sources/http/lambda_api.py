"""Lambda's REST API apart from Invoke: the reads a local runner can answer.

``ListFunctions``, ``GetFunction``, ``GetFunctionConfiguration`` and ``ListEventSourceMappings`` are
answered from the registry in Lambda's shapes, so ``aws lambda list-functions`` and friends print
something useful. Every other operation (any path under an API version, ``/2015-03-31/``,
``/2019-09-30/`` and the rest) gets a Lambda-shaped error (an
``X-Amzn-ErrorType`` header and a JSON ``message``), never a bare 404. Callers authenticate as for
Invoke (:mod:`sources.http.callers`).
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import sys
import time
import uuid
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, unquote

from broker import environment
from broker.registry import Function, Registry

if TYPE_CHECKING:
    from sources.http.webhook import HttpSource

PREFIX = "/2015-03-31/"
_API_VERSION = re.compile(r"/20\d\d-\d\d-\d\d/")  # Lambda's REST paths start with their API version
_FUNCTION = re.compile(r"/2015-03-31/functions/([^/]+)(/configuration)?/?")
_LIST = re.compile(r"/2015-03-31/functions/?")
_MAPPINGS = re.compile(r"/2015-03-31/event-source-mappings/?")
KNOWN = "Invoke, ListFunctions, GetFunction, GetFunctionConfiguration, ListEventSourceMappings"

# A reply: status, extra headers, body (JSON unless empty).
Reply = tuple[int, list[tuple[bytes, bytes]], bytes]


def is_lambda_path(path: str) -> bool:
    """True for a path of Lambda's REST API (``/2015-03-31/...``, ``/2019-09-30/...``)."""
    return _API_VERSION.match(path) is not None


def lambda_error(status: int, error_type: str, message: str, retry_after: bool = False) -> Reply:
    """An error the way Lambda's REST API sends it (boto3 reads the type from the header)."""
    headers = [(b"x-amzn-errortype", error_type.encode())]
    if retry_after:
        headers.append((b"retry-after", b"1"))
    return status, headers, json.dumps({"Type": "User", "message": message}).encode()


def function_arn(region: str, name: str, qualifier: str | None = None) -> str:
    arn = f"arn:aws:lambda:{region}:{environment.account()}:function:{name}"
    return f"{arn}:{qualifier}" if qualifier else arn


def split_function_name(raw: str) -> tuple[str, str | None]:
    """A FunctionName parameter (a name, a partial or a full ARN, each maybe qualified) as
    ``(name, qualifier)``; the qualifier is None when none is given."""
    raw = unquote(raw)
    parts = raw.split(":")
    if raw.startswith("arn:"):  # arn:aws:lambda:REGION:ACCOUNT:function:NAME[:QUALIFIER]
        return (parts[6] if len(parts) >= 7 else raw), (parts[7] if len(parts) >= 8 else None)
    if len(parts) >= 3 and parts[1] == "function":  # ACCOUNT:function:NAME[:QUALIFIER]
        return parts[2], (parts[3] if len(parts) >= 4 else None)
    if len(parts) == 2:  # NAME:QUALIFIER
        return parts[0], parts[1]
    return raw, None


def not_found(region: str, name: str, qualifier: str | None = None) -> Reply:
    arn = function_arn(region, name, qualifier)
    return lambda_error(404, "ResourceNotFoundException", f"Function not found: {arn}")


def find(source: HttpSource, raw: str, query: bytes = b"") -> tuple[Function | None, Reply | None]:
    """The function a FunctionName (and ``?Qualifier=``) names, or the 404 Lambda answers: a
    qualifier other than ``$LATEST`` names a version or alias, and lambdalite has none."""
    name, qualifier = split_function_name(raw)
    asked = parse_qs(query.decode("latin-1")).get("Qualifier")
    if asked:
        qualifier = asked[0]
    fn = source.registry.functions.get(name)
    if fn is None or qualifier not in (None, "$LATEST"):
        return None, not_found(source.region, name, qualifier)
    return fn, None


def _modified(registry: Registry) -> str:
    try:
        when = registry.path.stat().st_mtime
    except OSError:
        when = time.time()
    return time.strftime("%Y-%m-%dT%H:%M:%S.000+0000", time.gmtime(when))


def configuration(source: HttpSource, fn: Function) -> dict[str, Any]:
    """``FunctionConfiguration`` as Lambda returns it, from the registry entry."""
    python = f"python{sys.version_info.major}.{sys.version_info.minor}"
    runtime = python if fn.python else (fn.runtime or "provided.al2023")
    described = fn.model_dump_json(exclude={"triggers"}).encode()
    return {
        "FunctionName": fn.name,
        "FunctionArn": function_arn(source.region, fn.name),
        "Runtime": runtime,
        "Role": f"arn:aws:iam::{environment.account()}:role/lambdalite",
        "Handler": fn.handler or " ".join(fn.command or ()),
        "CodeSize": 0,
        "Description": "",
        "Timeout": int(fn.timeout) if float(fn.timeout).is_integer() else fn.timeout,
        "MemorySize": fn.memory,
        "LastModified": _modified(source.registry),
        "CodeSha256": base64.b64encode(hashlib.sha256(described).digest()).decode(),
        "Version": "$LATEST",
        "TracingConfig": {"Mode": "PassThrough"},
        "RevisionId": str(uuid.UUID(bytes=hashlib.sha256(described).digest()[:16], version=4)),
        "State": "Active",
        "LastUpdateStatus": "Successful",
        "PackageType": "Zip",
        "Architectures": ["x86_64" if _machine() in ("x86_64", "amd64") else "arm64"],
        "EphemeralStorage": {"Size": fn.ephemeral_storage},
        "LoggingConfig": {"LogFormat": "Text", "LogGroup": f"/aws/lambda/{fn.name}"},
    }


def _machine() -> str:
    import platform

    return platform.machine().lower()


def _mappings(source: HttpSource, fn: Function) -> list[dict[str, Any]]:
    region, out = source.region, []
    modified = source.registry.path.stat().st_mtime if source.registry.path.exists() else time.time()
    for n, trigger in enumerate(fn.triggers):
        if trigger.source == "sqlite":
            arn = f"arn:aws:dynamodb:{region}:{environment.account()}:table/{trigger.table}/stream/lambdalite"
            extra: dict[str, Any] = {"BatchSize": trigger.batch_size, "StartingPosition": "LATEST",
                                     "MaximumBatchingWindowInSeconds": int(trigger.batching_window),
                                     "MaximumRetryAttempts": fn.retries}
        elif trigger.source == "files":
            arn = f"arn:aws:s3:::{trigger.bucket}"
            extra = {"BatchSize": 1}
        elif trigger.source == "http":
            arn = f"arn:aws:execute-api:{region}:{environment.account()}:lambdalite/$default/*{trigger.path}"
            extra = {"BatchSize": 1}
        else:  # a trigger kind added later: listed by its source name
            arn = f"arn:aws:{trigger.source}:{region}:{environment.account()}:lambdalite/{fn.name}/{n}"
            extra = {"BatchSize": 1}
        out.append({
            "UUID": str(uuid.uuid5(uuid.NAMESPACE_URL, f"lambdalite:{fn.name}:{n}:{arn}")),
            "EventSourceArn": arn,
            "FunctionArn": function_arn(region, fn.name),
            "LastModified": modified,
            "State": "Enabled",
            "StateTransitionReason": "USER_INITIATED",
            **extra,
        })
    return out


def _page(items: list[Any], query: dict[str, list[str]]) -> tuple[list[Any], str | None]:
    """Lambda's Marker / MaxItems paging; the marker is the index of the next item."""
    try:
        start = int(query.get("Marker", ["0"])[0])
        size = int(query.get("MaxItems", ["50"])[0])
    except ValueError:
        start, size = -1, 0
    if start < 0 or not 1 <= size <= 10_000:
        raise ValueError("Marker must be one this API returned and MaxItems between 1 and 10000")
    end = start + size
    return items[start:end], (str(end) if end < len(items) else None)


def _ok(document: dict[str, Any]) -> Reply:
    return 200, [], json.dumps(document, separators=(",", ":")).encode()


def answer(source: HttpSource, method: str, path: str, query: bytes) -> Reply:
    """The reply to a non-Invoke request of Lambda's API (already authenticated)."""
    params = parse_qs(query.decode("latin-1"))
    try:
        if method == "GET" and _LIST.fullmatch(path):
            functions = [configuration(source, fn) for fn in source.registry]
            page, marker = _page(functions, params)
            return _ok({"Functions": page, **({"NextMarker": marker} if marker else {})})
        if method == "GET" and _MAPPINGS.fullmatch(path):
            wanted = params.get("FunctionName", [None])[0]
            fns = list(source.registry)
            if wanted is not None:
                fn, missing = find(source, wanted)
                if fn is None:
                    return missing or not_found(source.region, wanted)
                fns = [fn]
            mappings = [m for fn in fns for m in _mappings(source, fn)]
            page, marker = _page(mappings, params)
            return _ok({"EventSourceMappings": page, **({"NextMarker": marker} if marker else {})})
    except ValueError as e:
        return lambda_error(400, "InvalidParameterValueException", str(e))
    found = _FUNCTION.fullmatch(path)
    if method == "GET" and found:
        fn, missing = find(source, found.group(1), query)
        if fn is None:
            return missing or not_found(source.region, found.group(1))
        config = configuration(source, fn)
        if found.group(2):
            return _ok(config)
        return _ok({"Configuration": config,
                    "Code": {"RepositoryType": "S3", "Location": ""},
                    "Tags": {},
                    **({"Concurrency": {"ReservedConcurrentExecutions": fn.max_concurrency}}
                       if fn.max_concurrency else {})})
    return lambda_error(400, "UnknownOperationException",
                        f"lambdalite does not implement {method} {path} (it answers {KNOWN})")
