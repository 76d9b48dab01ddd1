"""The ``context`` object a handler receives: the attributes of Lambda's Python context."""

from __future__ import annotations

import time
from dataclasses import dataclass

from broker.environment import function_arn, region

__all__ = ["LambdaContext", "function_arn"]


@dataclass(frozen=True)
class LambdaContext:
    """What Lambda's Python runtime passes as ``context``; ``deadline`` is an epoch time in seconds."""

    function_name: str
    aws_request_id: str
    memory_limit_in_mb: int
    deadline: float
    log_stream_name: str
    function_version: str = "$LATEST"
    identity: object = None
    client_context: object = None

    @property
    def invoked_function_arn(self) -> str:
        return function_arn(self.function_name)

    @property
    def log_group_name(self) -> str:
        return f"/aws/lambda/{self.function_name}"

    def get_remaining_time_in_millis(self) -> int:
        """Milliseconds left before the invocation is killed (never negative)."""
        return max(0, int((self.deadline - time.time()) * 1000))

    def environment(self) -> dict[str, str]:
        """The same facts as environment variables, for command functions."""
        return {
            "AWS_LAMBDA_FUNCTION_NAME": self.function_name,
            "AWS_LAMBDA_FUNCTION_VERSION": self.function_version,
            "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": str(self.memory_limit_in_mb),
            "AWS_LAMBDA_LOG_GROUP_NAME": self.log_group_name,
            "AWS_LAMBDA_LOG_STREAM_NAME": self.log_stream_name,
            "AWS_REGION": region(),
            "LAMBDA_REQUEST_ID": self.aws_request_id,
            "LAMBDA_FUNCTION_ARN": self.invoked_function_arn,
            "LAMBDA_DEADLINE_MS": str(int(self.deadline * 1000)),
        }
