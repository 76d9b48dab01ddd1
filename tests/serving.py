"""Test helpers for the HTTP source: uvicorn on a free loopback port, and a stand-in worker.

The stand-in pops jobs from a function's real RQ queue and records an outcome with
``broker.results.record``, the way a worker does, so synchronous paths can be tested end to end
over real sockets without the worker package.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import redis
import uvicorn
from rq.job import Job
from rq.serializers import JSONSerializer

from broker import results
from broker.envelope import Event
from broker.queues import function_queue

_boto_clients: list[Any] = []


def lambda_client(url: str, key_id: str = "x", secret: str = "x", read_timeout: float = 60) -> Any:
    """A real boto3 Lambda client of the Invoke API at ``url`` (no retries), closed when the test
    ends (tests/conftest.py): an unclosed one's sockets would be collected in a later test."""
    import boto3
    from botocore.config import Config

    client = boto3.client("lambda", endpoint_url=url, region_name="us-east-1", aws_access_key_id=key_id,
                          aws_secret_access_key=secret,
                          config=Config(retries={"max_attempts": 1}, read_timeout=read_timeout))
    _boto_clients.append(client)
    return client


def close_lambda_clients() -> None:
    while _boto_clients:
        _boto_clients.pop().close()


def queued(r: redis.Redis, function: str) -> list[Event]:
    """The events waiting in ``function``'s queue, in order."""
    queue = function_queue(r, function)
    jobs = [Job.fetch(i, connection=r, serializer=JSONSerializer) for i in queue.job_ids]
    return [Event.from_dict(job.args[0]) for job in jobs]


@contextmanager
def serve(app: Any, settings: Any = None) -> Iterator[str]:
    """Run ``app`` on uvicorn in a thread on a free 127.0.0.1 port; yields the base URL. With
    ``settings``, uvicorn is configured as the webhook process configures it (``server_config``)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    if settings is None:
        config = uvicorn.Config(app, log_config=None, access_log=False, lifespan="on",
                                timeout_graceful_shutdown=3)
    else:
        from sources.http.webhook import server_config

        config = server_config(app, settings)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name="uvicorn", daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()
        if thread.is_alive():
            raise RuntimeError("uvicorn did not stop within 10 s")


Answer = Callable[[Event], results.Outcome]


class StandInWorker:
    """Pops ``function``'s jobs and records ``answer(event)`` as each one's outcome."""

    def __init__(self, redis_url: str, function: str, answer: Answer) -> None:
        self.client = redis.Redis.from_url(redis_url)
        self.queue = function_queue(self.client, function)
        self.answer = answer
        self.seen: list[Event] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"stand-in-{function}", daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            popped = self.client.blpop([self.queue.key], timeout=0.2)
            if popped is None:
                continue
            job = Job.fetch(popped[1].decode(), connection=self.client, serializer=JSONSerializer)
            event = Event.from_dict(job.args[0])
            self.seen.append(event)
            results.record(self.client, event.id, self.answer(event))

    def __enter__(self) -> StandInWorker:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)
        self.client.close()


def echo(event: Event) -> results.Outcome:
    """Succeeds with the payload back, or fails when the payload asks to."""
    payload = event.payload
    if isinstance(payload, dict) and payload.get("fail"):
        error = {"errorType": "ValueError", "errorMessage": str(payload["fail"])}
        return results.Outcome("failed", error=error)
    return results.Outcome("succeeded", result={"echo": payload})
