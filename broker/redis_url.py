"""``LAMBDALITE_REDIS_URL`` naming a Redis watched by Sentinel:
``redis+sentinel://[[user]:password@]host:port[,host:port...]/service[/db][?sentinel_password=...]``.

The form is that of RQ's ``redis-sentinel-url`` (rq-dashboard reads it): the sentinels to ask,
the service (Sentinel's name of the primary, ``mymaster`` in Redis's own examples), the database.
The password is the data servers' (primary and replicas); sentinels are asked without one unless
``sentinel_password`` names theirs. Every other URL (``redis://``, ``rediss://``, ``unix://``) is
redis-py's to read.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import parse_qs, unquote, urlsplit

SCHEME = "redis+sentinel"
SENTINEL_PORT = 26379


@dataclass(frozen=True, slots=True)
class SentinelTarget:
    """Where to find the primary: the sentinels to ask and the service they watch."""

    sentinels: tuple[tuple[str, int], ...]
    service: str
    db: int = 0
    username: str | None = None
    password: str | None = None
    sentinel_password: str | None = None

    def redacted(self) -> str:
        """The URL without its passwords, for logs and error lines."""
        hosts = ",".join(f"{host}:{port}" for host, port in self.sentinels)
        auth = ":***@" if self.password else ""
        return f"{SCHEME}://{auth}{hosts}/{self.service}/{self.db}"


def sentinel_target(url: str) -> SentinelTarget | None:
    """The Sentinel target ``url`` names, or None when it is not a ``redis+sentinel://`` URL.

    Raises ValueError, saying what is wrong, for a ``redis+sentinel://`` URL that names no
    sentinel, no service, a bad port or database, or an option it does not know.
    """
    if not url.startswith(SCHEME + "://"):
        return None
    parts = urlsplit(url)
    auth, _, hostspec = parts.netloc.rpartition("@")
    username = password = None
    if auth:
        user, _, secret = auth.partition(":")
        username, password = unquote(user) or None, unquote(secret) or None
    sentinels = tuple(_host(spec) for spec in hostspec.split(",") if spec)
    if not sentinels:
        raise ValueError(f"{SCHEME}:// URL names no sentinel (host:port[,host:port])")
    path = [p for p in parts.path.split("/") if p]
    if not path or len(path) > 2:
        raise ValueError(f"{SCHEME}:// URL needs the service after the sentinels: /mymaster[/db]")
    db = 0
    if len(path) == 2:
        if not path[1].isdigit():
            raise ValueError(f"{SCHEME}:// URL: database {path[1]!r} is not a number")
        db = int(path[1])
    query = parse_qs(parts.query, keep_blank_values=True)
    unknown = sorted(set(query) - {"sentinel_password"})
    if unknown:
        raise ValueError(f"{SCHEME}:// URL: unknown option {unknown[0]!r} (known: sentinel_password)")
    sentinel_password = query.get("sentinel_password", [""])[-1] or None
    return SentinelTarget(sentinels, unquote(path[0]), db, username, password, sentinel_password)


def _host(spec: str) -> tuple[str, int]:
    host, colon, port = spec.rpartition(":")
    if not colon:
        return spec, SENTINEL_PORT
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"{SCHEME}:// URL: sentinel {spec!r} has no valid port")
    return host.strip("[]"), int(port)


def redacted(url: str) -> str:
    """``url`` without its password, for logs and error lines."""
    try:
        target = sentinel_target(url)
    except ValueError:
        target = None
    if target is not None:
        return target.redacted()
    parts = urlsplit(url)
    if parts.password:
        return url.replace(f":{parts.password}@", ":***@", 1)
    return url
