"""RQ's own readers, and rq-dashboard (the web UI RQ's users run), read lambdalite's Redis while a
worker is busy."""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from flask.testing import FlaskClient
from rq import Worker
from rq.serializers import JSONSerializer

from broker.envelope import Event
from broker.queues import queue_name
from tests.stack import Scaler, publish

FIXTURES = Path(__file__).parent / "fixtures"
QUEUE = queue_name("nap")

SLEEPER = """
[functions.nap]
handler = "hostile.sleep"
timeout = 30
max_concurrency = 1
"""


@pytest.fixture
def busy(project: Path, redis_url: str, r: redis.Redis) -> Iterator[Event]:
    """A real scaler whose one worker is running a handler that sleeps; yields the event it runs."""
    shutil.copy(FIXTURES / "hostile.py", project / "hostile.py")
    (project / "lambdalite.toml").write_text(SLEEPER)
    with Scaler(project, LAMBDALITE_IDLE_TIMEOUT="30"):
        event = publish(redis_url, project, "nap", {"seconds": 20})
        deadline = time.monotonic() + 20
        while r.hget(f"rq:job:{event.id}", "status") != b"started":
            assert time.monotonic() < deadline, "the job did not start"
            time.sleep(0.05)
        yield event


@pytest.fixture
def dashboard(redis_url: str, monkeypatch: pytest.MonkeyPatch) -> FlaskClient:
    """rq-dashboard's own app, from its factory, configured as ``rq-dashboard --json``."""
    monkeypatch.setenv("RQ_DASHBOARD_REDIS_URL", redis_url)
    monkeypatch.setenv("RQ_DASHBOARD_URL_PREFIX", "")
    monkeypatch.setenv("RQ_DASHBOARD_JSON_SERIALIZER", "true")
    from rq_dashboard.app import create_app

    return create_app().test_client()


def test_rqs_worker_reader_sees_the_busy_worker_and_its_job(busy: Event, r: redis.Redis) -> None:
    workers = Worker.all(connection=r, serializer=JSONSerializer)
    assert len(workers) == 1
    worker = workers[0]
    assert worker.get_state() == "busy" and [q.name for q in worker.queues] == [QUEUE]
    job = worker.get_current_job()
    assert job is not None and job.id == busy.id and job.get_status() == "started"
    assert job.get_call_string()  # the job's data, read with the serializer it was written with
    assert worker.last_heartbeat is not None and worker.birth_date is not None


def test_dashboard_queue_and_job_pages_while_a_worker_runs_a_job(busy: Event, dashboard: FlaskClient) -> None:
    queues = dashboard.get("/0/data/queues.json")
    assert queues.status_code == 200, queues.text
    assert QUEUE in {q["name"] for q in queues.get_json()["queues"]}
    started = dashboard.get(f"/0/data/jobs/{QUEUE}/started/8/asc/1.json")
    assert started.status_code == 200, started.text
    assert [j["id"] for j in started.get_json()["jobs"]] == [busy.id]
    job = dashboard.get(f"/0/data/job/{busy.id}.json")
    assert job.status_code == 200, job.text
    assert job.get_json()["status"] == "started"
    for page in ("/0/view/workers", "/0/view/queues", "/0/view/jobs"):
        assert dashboard.get(page, follow_redirects=True).status_code == 200, page


# rq-dashboard 0.9.0's workers.json lists workers with Worker.all(connection) and no serializer, so
# the current job's data is read as pickle; RQ 3.0's own worker run with --serializer JSONSerializer
# meets the same 500 (nothing in a worker's hash names a serializer). When rq-dashboard passes its
# configured serializer, this passes and the strict xfail fails: drop the mark then.
@pytest.mark.xfail(strict=True, reason="rq-dashboard 0.9.0 reads a busy worker's job with pickle")
def test_dashboard_workers_page_while_a_worker_runs_a_job(busy: Event, dashboard: FlaskClient) -> None:
    workers = dashboard.get("/0/data/workers.json")
    assert workers.status_code == 200, workers.text
    listed = workers.get_json()["workers"]
    assert len(listed) == 1 and listed[0]["state"] == "busy" and listed[0]["queues"] == [QUEUE]
    assert listed[0]["current_job"]["job_id"] == busy.id
