"""bench/peers.py's actor for Dramatiq: the same work as scale_handlers.rq_mark (the broker from PEERS_REDIS)."""

import os

import dramatiq
import scale_handlers
from dramatiq.brokers.redis import RedisBroker

dramatiq.set_broker(RedisBroker(url=os.environ["PEERS_REDIS"]))


@dramatiq.actor(actor_name="work", max_retries=0)
def work(log, sleep=0.0, cpu=0.0):
    scale_handlers.rq_mark(log, sleep=sleep, cpu=cpu)
