"""Successors: the next event of a stream with one event in flight, published by the very
transaction that records the success of the event before it.

A source that keeps one event in flight (each SQLite stream) reads and encodes the next one while
the one in flight runs, and stages it here with its own bookkeeping for it: fields of one hash
(the stream's cursor) and counters. The worker's transaction that records a *clean* success of
the event in flight (it succeeded, and its result names no ``batchItemFailures``) applies all of
it at once: the job is stored and queued, the fields set, the counters added, the scaler woken.
So the next event starts without a round trip through the source, and the source's bookkeeping
still moves in the same transaction as the publish.

Anything else leaves the staged successor alone: a failure, a dead letter, a partial batch
failure, or a success after the successor's deadline (its envelope's age must stay honest). The
source, which sees every outcome, then deletes the staged successor in the transaction of what it
does instead. Keys of another type met on the way are moved aside (:mod:`broker.quarantine`); a
staged successor missing a part is never applied.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

from broker import quarantine

KEEP = 3600  # seconds a staged successor that nobody applied or deleted is kept

# KEYS[1]: the staged successor; ARGV[1]: now (seconds); then quarantine.script_args().
_RELEASE = quarantine.MOVE_FUNCTION + """
local out = {}
move(KEYS[1], 'hash', 1, out)
local raw = redis.call('HGETALL', KEYS[1])
if #raw == 0 then return out end
local s, job, fields, counts = {}, {}, {}, {}
for i = 1, #raw, 2 do
  local name, value = raw[i], raw[i + 1]
  local kind, rest = string.sub(name, 1, 2), string.sub(name, 3)
  if kind == 'j:' then table.insert(job, rest); table.insert(job, value)
  elseif kind == 'h:' then table.insert(fields, rest); table.insert(fields, value)
  elseif kind == 'n:' then
    if not string.match(value, '^%d+$') or #value > 18 then return out end
    table.insert(counts, rest); table.insert(counts, value)
  else s[name] = value end
end
for _, part in ipairs({'by', 'id', 'job', 'queue', 'queues', 'hash', 'stats'}) do
  if not s[part] then return out end
end
if #job == 0 or not tonumber(s['by']) or tonumber(ARGV[1]) > tonumber(s['by']) then return out end
move(s['job'], 'hash', 1, out)
move(s['queue'], 'list', 1, out)
move(s['queues'], 'set', 1, out)
move(s['hash'], 'hash', 1, out)
move(s['stats'], 'hash', 1, out)
redis.call('HSET', s['job'], unpack(job))
redis.call('RPUSH', s['queue'], s['id'])
redis.call('SADD', s['queues'], s['queue'])
if #fields > 0 then redis.call('HSET', s['hash'], unpack(fields)) end
for i = 1, #counts, 2 do
  local field = counts[i]
  local value = redis.call('HGET', s['stats'], field)
  if value and (not string.match(value, '^%d+$') or #value > 18) then
    redis.call('HDEL', s['stats'], field)
    if #out == 0 then table.insert(out, ARGV[5]) end
    table.insert(out, s['stats'])
    table.insert(out, "has field '" .. field .. "' = '" .. string.sub(value, 1, 40) .. "', not a count")
    table.insert(out, 'counted again from 0')
  end
  redis.call('HINCRBY', s['stats'], field, counts[i + 1])
end
if s['wake'] then redis.call('PUBLISH', s['wake'], s['name'] or '') end
redis.call('DEL', KEYS[1])
return out
"""


def key(event_id: str) -> str:
    """The key of the successor staged after ``event_id``."""
    return f"lambdalite:successor:{event_id}"


def clean(result: Any) -> bool:
    """Whether a succeeded event's ``result`` lets its successor go: it reports no failed items
    (Lambda's ReportBatchItemFailures: a missing or empty ``batchItemFailures`` is a full success)."""
    return not (isinstance(result, dict) and result.get("batchItemFailures"))


def stage(pipe: Any, after: str, release_by: float, job: tuple[str, str, Mapping[str, Any]],
          queue: tuple[str, str, str, str], fields: tuple[str, Mapping[str, Any]],
          counters: tuple[str, Mapping[str, int]]) -> None:
    """Queue on ``pipe`` (a transaction) the staging of a successor of event ``after``.

    ``job`` is (job id, job key, job hash); ``queue`` (queue key, the set of queues, the wake-up
    channel, the message to publish on it); ``fields`` (a hash key, fields to set in it);
    ``counters`` (a hash key, increments). It is applied by :func:`release` only until
    ``release_by`` (seconds since the epoch).
    """
    job_id, job_key, mapping = job
    queue_key, queues_key, wake, name = queue
    hash_key, values = fields
    stats_key, increments = counters
    staged: dict[str, Any] = {"by": repr(release_by), "id": job_id, "job": job_key, "queue": queue_key,
                              "queues": queues_key, "hash": hash_key, "stats": stats_key, "wake": wake, "name": name}
    staged.update({f"j:{k}": v for k, v in mapping.items()})
    staged.update({f"h:{k}": v for k, v in values.items()})
    staged.update({f"n:{k}": n for k, n in increments.items()})
    target = key(after)
    quarantine.guard(pipe, {target: "hash"})
    pipe.delete(target)
    pipe.hset(target, mapping=staged)
    pipe.expire(target, KEEP)


def release(pipe: Any, event_id: str, now: float | None = None) -> None:
    """Queue on ``pipe`` the application of the successor staged after ``event_id``, if there is one
    and its deadline has not passed (call it only for a clean success; see :func:`clean`)."""
    pipe.eval(_RELEASE, 1, key(event_id), time.time() if now is None else now, *quarantine.script_args())


def drop(pipe: Any, event_id: str) -> None:
    """Queue on ``pipe`` the deletion of the successor staged after ``event_id`` (its source decides)."""
    pipe.delete(key(event_id))
