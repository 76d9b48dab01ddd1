"""Which peer a request came from: ``X-Forwarded-For`` / ``X-Real-IP`` only from trusted proxies.

By default (``LAMBDALITE_TRUSTED_PROXIES`` empty) the client is the TCP peer, whatever headers it
sends, so no caller can set ``requestContext.http.sourceIp``. With trusted proxies configured
(addresses or networks, comma-separated), a request whose peer is one of them has its client taken
from ``X-Forwarded-For`` by uvicorn's own ``ProxyHeadersMiddleware`` (the right-most address that is
not itself a trusted proxy), or, when it sends no ``X-Forwarded-For``, from ``X-Real-IP``.
"""

from __future__ import annotations

import ipaddress
from typing import Any

from starlette.types import ASGIApp, Receive, Scope, Send
from uvicorn.middleware.proxy_headers import ProxyHeadersMiddleware

from broker.errors import ConfigError

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def parse_trusted(spec: str) -> list[Network]:
    """The networks of ``LAMBDALITE_TRUSTED_PROXIES``; raises ConfigError for an entry that is none."""
    networks: list[Network] = []
    for entry in (e.strip() for e in spec.split(",")):
        if not entry:
            continue
        try:
            networks.append(ipaddress.ip_network(entry, strict=False))
        except ValueError:
            raise ConfigError(f"LAMBDALITE_TRUSTED_PROXIES: {entry!r} is not an IP address or network") from None
    return networks


def _trusted(host: str | None, networks: list[Network]) -> bool:
    if not host:
        return False
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    return any(address in net for net in networks)


class TrustedProxies:
    """ASGI middleware: the client address as the trusted proxies report it (see the module docstring)."""

    def __init__(self, app: ASGIApp, networks: list[Network]) -> None:
        self.app = app
        self.networks = networks
        self.forwarded = ProxyHeadersMiddleware(app, trusted_hosts=[str(n) for n in networks])  # type: ignore[arg-type]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        client = scope.get("client")
        if not _trusted(client[0] if client else None, self.networks):
            await self.app(scope, receive, send)
            return
        real_ip = None
        for name, value in scope["headers"]:
            if name == b"x-forwarded-for":
                await self.forwarded(scope, receive, send)  # type: ignore[arg-type]
                return
            if name == b"x-real-ip":
                real_ip = value.decode("latin-1").strip()
        if real_ip and _is_address(real_ip):
            scope["client"] = (real_ip, 0)
        await self.app(scope, receive, send)


def _is_address(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def wrap(app: Any, spec: str) -> Any:
    """``app`` behind :class:`TrustedProxies` when proxies are configured, else ``app`` itself."""
    networks = parse_trusted(spec)
    return TrustedProxies(app, networks) if networks else app
