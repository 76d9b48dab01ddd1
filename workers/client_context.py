"""``context.client_context`` as Lambda's Python runtime builds it from the caller's ClientContext.

The Invoke API's ``X-Amz-Client-Context`` header carries a JSON object with ``client``, ``custom``
and ``env``; the runtime turns it into an object with those three attributes, ``client`` itself
an object with the mobile SDK's five fields (missing ones are None).
"""

from __future__ import annotations

from typing import Any


class Client:
    __slots__ = ("installation_id", "app_title", "app_version_name", "app_version_code", "app_package_name")

    def __init__(self, data: dict[str, Any]) -> None:
        for name in self.__slots__:
            setattr(self, name, data.get(name))


class ClientContext:
    __slots__ = ("custom", "env", "client")

    def __init__(self, data: dict[str, Any]) -> None:
        self.custom = data.get("custom")
        self.env = data.get("env")
        client = data.get("client")
        self.client = Client(client) if isinstance(client, dict) else client


def from_dict(data: Any) -> ClientContext | None:
    """The handler's ``client_context`` for what the caller sent (None when it sent nothing)."""
    return ClientContext(data) if isinstance(data, dict) else None
