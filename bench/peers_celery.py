"""bench/peers.py's task for Celery: the same work as scale_handlers.rq_mark (its broker from PEERS_CELERY_BROKER)."""

import os

import scale_handlers
from celery import Celery

app = Celery("peers_celery", broker=os.environ["PEERS_CELERY_BROKER"])
app.conf.update(task_ignore_result=True, worker_hijack_root_logger=False, broker_connection_retry_on_startup=True)


@app.task(name="work")
def work(log, sleep=0.0, cpu=0.0):
    scale_handlers.rq_mark(log, sleep=sleep, cpu=cpu)
