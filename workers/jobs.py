"""Reading RQ job hashes that may be damaged (a foreign writer, a mistake by hand).

RQ raises whatever its parsing meets (ValueError, KeyError, a deserialization error, WRONGTYPE)
from ``Job.fetch`` or later, from ``job.args``. :func:`read` decodes everything at once and turns
any of it into :class:`UnreadableJob` naming the key; :func:`salvage` then looks for the event
envelope in what is left, so that the event itself is not lost with the job.
"""

from __future__ import annotations

import redis
from rq.exceptions import NoSuchJobError
from rq.job import Job
from rq.serializers import JSONSerializer

from broker import rqlayout
from broker.connection import TRANSIENT
from broker.envelope import Event
from broker.queues import RUNNER


class UnreadableJob(Exception):
    """A job id whose hash is missing (``missing``) or cannot be read as an RQ job."""

    def __init__(self, key: str, problem: str, missing: bool = False) -> None:
        super().__init__(f"redis key {key} {problem}")
        self.key, self.problem, self.missing = key, problem, missing


def job_id(raw: bytes) -> str | None:
    """The job id in a queue or registry entry, or None when it cannot be one (not UTF-8, a colon)."""
    try:
        text = raw.decode()
    except UnicodeDecodeError:
        return None
    return text if text and ":" not in text else None


def read(client: redis.Redis, job_id: str) -> Job:
    """The job, fully decoded; raises :class:`UnreadableJob` (or a Redis outage's error)."""
    key = rqlayout.job_key(job_id)
    try:
        job = Job.fetch(job_id, connection=client, serializer=JSONSerializer)
        _ = job.func_name, job.args, job.kwargs  # decoded now, not halfway through the job
        return job
    except TRANSIENT:
        raise
    except Exception as e:  # RQ's parsing raises anything; none of it may stop a worker
        problem = f"{type(e).__name__}: {e}"[:200]
        missing = isinstance(e, NoSuchJobError) and not client.exists(key)
    if missing:
        raise UnreadableJob(key, "does not exist", missing=True)
    raise UnreadableJob(key, f"is not a job RQ can read ({problem})")


def decode(client: redis.Redis, job_id: str, fields: list[bytes]) -> Job:
    """The job whose hash holds ``fields`` (HGETALL's reply as a flat list), fully decoded as
    :func:`read` decodes it; raises :class:`UnreadableJob`."""
    job = Job(job_id, connection=client, serializer=JSONSerializer)
    try:
        rqlayout.restore(job, fields)
        _ = job.func_name, job.args, job.kwargs
        return job
    except Exception as e:  # as in read: RQ's parsing raises anything
        raise UnreadableJob(job.key, f"is not a job RQ can read ({f'{type(e).__name__}: {e}'[:200]})") from e


def salvage(client: redis.Redis, key: str) -> Event | None:
    """The event envelope still in the ``data`` of an unreadable job hash, if there is one."""
    try:
        data = client.hget(key, rqlayout.DATA)
        if not isinstance(data, bytes):
            return None
        func, _instance, args, kwargs = rqlayout.call_of(data)
        if func != RUNNER or len(args) != 1 or kwargs:
            return None
        return Event.from_dict(args[0])
    except TRANSIENT:
        raise
    except Exception:  # anything at all: there is simply no event to keep
        return None


def worker_of(client: redis.Redis, key: str) -> str | None:
    """The ``worker_name`` field of a job hash RQ cannot read, if it has a readable one."""
    try:
        raw = client.hget(key, rqlayout.WORKER_NAME)
        return raw.decode() if isinstance(raw, bytes) and raw else None
    except (redis.ResponseError, UnicodeDecodeError):
        return None
