"""The OpenAPI 3.0 description of every route this server answers, built from the registry."""

from __future__ import annotations

from typing import Any

from broker.registry import Registry
from sources.http.http_triggers import path_parameters

_JSON_ANY: dict[str, Any] = {"application/json": {"schema": {}}}
_LAMBDA_ERROR = {
    "description": "A Lambda error; its type is in the X-Amzn-ErrorType header.",
    "headers": {"X-Amzn-ErrorType": {"schema": {"type": "string"}}},
    "content": {"application/json": {"schema": {
        "type": "object",
        "properties": {"Type": {"type": "string"}, "message": {"type": "string"}},
        "required": ["message"],
    }}},
}
_MESSAGE = {"content": {"application/json": {"schema": {
    "type": "object", "properties": {"message": {"type": "string"}}, "required": ["message"],
}}}}
_RETRY = {"Retry-After": {"schema": {"type": "string"}}}


def _message(description: str, **extra: Any) -> dict[str, Any]:
    return {"description": description, **_MESSAGE, **extra}


def _lambda_error(description: str, **extra: Any) -> dict[str, Any]:
    return {**_LAMBDA_ERROR, "description": description, **extra}


def _invoke(example: str | None) -> dict[str, Any]:
    name: dict[str, Any] = {"type": "string", "minLength": 1}
    if example is not None:
        name["example"] = example
    return {"post": {
        "operationId": "Invoke",
        "summary": "Lambda's Invoke API (what boto3 and the AWS CLI call)",
        "parameters": [
            {"name": "FunctionName", "in": "path", "required": True,
             "schema": name},
            {"name": "X-Amz-Invocation-Type", "in": "header", "required": False,
             "schema": {"type": "string", "enum": ["RequestResponse", "Event", "DryRun"]}},
            {"name": "X-Amz-Log-Type", "in": "header", "required": False,
             "description": "Tail: the last 4 KB of the invocation's log in X-Amz-Log-Result (base64).",
             "schema": {"type": "string", "enum": ["None", "Tail"]}},
            {"name": "X-Amz-Client-Context", "in": "header", "required": False,
             "description": "Base64 JSON given to the handler as context.client_context.",
             "schema": {"type": "string", "maxLength": 3583}},
            {"name": "Qualifier", "in": "query", "required": False,
             "description": "Only $LATEST exists; any other is a 404.", "schema": {"type": "string"}},
            {"name": "Idempotency-Key", "in": "header", "required": False,
             "description": "Event invocations only: the same key gives the same event id for 24 h.",
             "schema": {"type": "string"}},
        ],
        "requestBody": {"required": False, "content": _JSON_ANY},
        "responses": {
            "200": {"description": "The handler's result; with X-Amz-Function-Error, its error object.",
                    "headers": {"X-Amz-Function-Error": {"schema": {"type": "string"}},
                                "X-Amz-Log-Result": {"schema": {"type": "string"}},
                                "X-Amz-Executed-Version": {"schema": {"type": "string"}}},
                    "content": _JSON_ANY},
            "202": {"description": "Event invocation stored in the queue.",
                    "headers": {"x-amzn-RequestId": {"schema": {"type": "string"}}}},
            "204": {"description": "DryRun: the request would have been accepted."},
            "400": _lambda_error("InvalidRequestContentException or InvalidParameterValueException"),
            "403": _lambda_error("The caller is refused: MissingAuthenticationTokenException, InvalidSignature"
                                 "Exception (SigV4), UnrecognizedClientException (unknown key or token)"),
            "404": _lambda_error("ResourceNotFoundException: no such function, or a qualifier other than $LATEST"),
            "409": _lambda_error("ResourceConflictException: same Idempotency-Key still being stored"),
            "413": _lambda_error("RequestTooLargeException: over 6 MB (sync) or 1 MB (async)"),
            "429": _lambda_error("TooManyRequestsException: too many events waiting to be stored",
                                 headers=_RETRY),
            "503": _lambda_error("ServiceException: Redis is unreachable", headers=_RETRY),
        },
    }}


def _webhook(registry: Registry) -> dict[str, Any]:
    paths: dict[str, Any] = {}
    for fn, trigger in registry.triggers("http"):
        item = paths.setdefault(trigger.path, {})
        params = [{"name": p, "in": "path", "required": True, "schema": {"type": "string", "minLength": 1}}
                  for p in path_parameters(trigger.path)]
        responses: dict[str, Any] = {
            "401": _message(f"The {trigger.auth} check failed."),
            "409": _message("Another request with the same id is still being stored."),
            "413": _message("The body is over the size limit."),
            "429": _message("Too many events waiting to be stored.", headers=_RETRY),
            "503": _message("Redis is unreachable.", headers=_RETRY),
        }
        if trigger.mode == "async":
            responses["202"] = {"description": "Stored in the queue.", "content": {"application/json": {
                "schema": {"type": "object", "properties": {"id": {"type": "string"}}, "required": ["id"]}}}}
        else:
            responses["default"] = {"description": "The handler's return value, as API Gateway renders it."}
            responses["500"] = _message("The handler failed.")
            responses["504"] = _message("No result within the function's timeout.")
        for method in trigger.methods:
            operation: dict[str, Any] = {
                "operationId": f"{fn.name}_{method.lower()}_{len(paths)}",
                "summary": f"Webhook for function {fn.name} ({trigger.mode}, auth {trigger.auth})",
                "parameters": params,
                "responses": responses,
            }
            if method not in ("GET", "HEAD", "DELETE"):
                operation["requestBody"] = {"required": False, "content": {"*/*": {"schema": {}}}}
            item[method.lower()] = operation
    return paths


def document(registry: Registry) -> dict[str, Any]:
    """The whole OpenAPI document."""
    invoke_path = "/2015-03-31/functions/{FunctionName}/invocations"
    text = {"description": "OK", "content": {"text/plain": {"schema": {"type": "string"}}}}
    return {
        "openapi": "3.0.3",
        "info": {"title": "lambdalite HTTP source", "version": "1"},
        "paths": {
            invoke_path: _invoke(next((fn.name for fn in registry), None)),
            **_webhook(registry),
            "/healthz": {"get": {"operationId": "healthz", "responses": {
                "200": {"description": "Redis is reachable.", "content": _JSON_ANY},
                "503": {"description": "Redis is unreachable.", "content": _JSON_ANY}}}},
            "/metrics": {"get": {"operationId": "metrics", "responses": {"200": {
                **text, "description": "Prometheus text format"}}}},
            "/openapi.json": {"get": {"operationId": "openapi", "responses": {"200": {
                "description": "This document.", "content": _JSON_ANY}}}},
        },
    }
