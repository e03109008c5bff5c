"""A job's live events (Server-Sent Events over real HTTP) and its captured logs, with a real worker."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from client_helpers import LiveServer
from httpx_sse import EventSource
from sqlalchemy import text
from svc_helpers import Service, bearer, npz_bytes, small_spec

from alignahead.client import Client, RetryPolicy
from service import jobcore
from service.db import make_sessionmaker, transaction
from service.jobcore import Lease
from worker.joblog import clip


@pytest.fixture(scope="module")
def live(service: Service) -> Iterator[str]:
    with LiveServer(service.settings) as server:
        yield server.url


@dataclass
class Received:
    metrics: list[dict[str, Any]] = field(default_factory=list)
    ids: list[str] = field(default_factory=list)  # the `id` of each metric event
    statuses: list[dict[str, Any]] = field(default_factory=list)
    kinds: list[str] = field(default_factory=list)  # every event's name, in order
    end: dict[str, Any] | None = None
    closed: bool = False  # the server closed the stream


def read_events(url: str, key: str, job_id: str, *, last_id: str | None = None, stop_after_metrics: int = 0,
                params: dict[str, Any] | None = None) -> Received:  # fmt: skip
    """Read a job's stream; with stop_after_metrics, drop the connection after that many rows."""
    got = Received()
    headers = {**bearer(key), "Accept": "text/event-stream"}
    if last_id is not None:
        headers["Last-Event-ID"] = last_id
    with httpx.Client(base_url=url, timeout=httpx.Timeout(10, read=60)) as http:
        with http.stream("GET", f"/v1/jobs/{job_id}/events", headers=headers, params=params) as response:
            assert response.status_code == 200, response.read()
            assert response.headers["content-type"].startswith("text/event-stream")
            for sse in EventSource(response).iter_sse():
                got.kinds.append(sse.event)
                if sse.event == "metric":
                    got.metrics.append(sse.json())
                    got.ids.append(sse.id)
                    if stop_after_metrics and len(got.metrics) >= stop_after_metrics:
                        return got  # leaving the block drops the connection mid-stream
                elif sse.event == "status":
                    got.statuses.append(sse.json())
                elif sse.event == "end":
                    got.end = sse.json()
            got.closed = True
    return got


def job_logs(service: Service, job_id: str, **params: Any) -> dict[str, Any]:
    r = service.client.get(f"/v1/jobs/{job_id}/logs", params=params)
    assert r.status_code == 200, r.text
    return r.json()


# --- events -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("service", ["embedded", "postgres"], indirect=True)
def test_stream_sends_every_row_once_across_a_reconnect_and_ends_with_the_job(live: str, service: Service) -> None:
    job = service.submit(small_spec(epochs=8))
    first = read_events(live, service.key, job["id"], stop_after_metrics=3)
    assert len(first.metrics) == 3 and not first.closed
    assert all(s["id"] == job["id"] for s in first.statuses)
    second = read_events(live, service.key, job["id"], last_id=first.ids[-1])
    assert second.closed and second.kinds[-2:] == ["status", "end"]

    stored = service.metrics(job["id"])["rows"]
    assert len(stored) == 16  # 8 epochs x 2 students
    assert first.metrics + second.metrics == stored  # each row once, in seq order, as GET metrics shows it
    assert first.ids + second.ids == [str(r["seq"]) for r in stored]

    final = second.statuses[-1]
    assert final["status"] == "succeeded" and final["progress"] == {"epoch": 8, "total": 8}
    assert final == service.job(job["id"]) | {"heartbeat_at": final["heartbeat_at"]}
    assert second.end == {"status": "succeeded"}
    seen = [s["status"] for s in first.statuses + second.statuses]
    assert seen == sorted(seen, key=["queued", "running", "succeeded"].index)  # never backwards
    # a status event comes with progress: the last before the end says every epoch is done
    assert [s["progress"]["epoch"] for s in second.statuses] == sorted(s["progress"]["epoch"] for s in second.statuses)

    # resuming with ?since= (or a header) after the job ended: only the rest, then the end
    middle = stored[9]["seq"]
    tail = read_events(live, service.key, job["id"], params={"since": middle})
    assert tail.metrics == stored[10:] and tail.kinds[-2:] == ["status", "end"] and tail.closed
    assert read_events(live, service.key, job["id"], last_id=str(stored[-1]["seq"])).metrics == []


@pytest.mark.parametrize("service", ["embedded"], indirect=True)
def test_the_client_follows_the_stream(live: str, service: Service) -> None:
    with Client(live, api_key=service.key, retry=RetryPolicy(attempts=3)) as client:
        job = client.submit(small_spec(epochs=4))
        events = list(job.events(timeout=120))
        assert client._http.events_supported  # the stream was used, not the polling fallback
    rows = [e.data for e in events if e.kind == "metric"]
    assert rows == service.metrics(job.id)["rows"]
    assert events[-1].kind == "status" and events[-1].data["status"] == "succeeded"


@pytest.mark.parametrize("service", ["embedded"], indirect=True)
def test_stream_is_tenant_scoped_and_checks_its_parameters(live: str, service: Service) -> None:
    job = service.submit(small_spec(epochs=1))
    other = service.authorize_other("someone-else")
    with httpx.Client(base_url=live, timeout=30) as http:
        r = http.get(f"/v1/jobs/{job['id']}/events", headers=bearer(other))
        assert r.status_code == 404 and f"no job with id '{job['id']}'" in r.json()["detail"]
        r = http.get(f"/v1/jobs/{job['id']}/events")
        assert r.status_code == 401 and "needs an API key" in r.json()["detail"]
        r = http.get(f"/v1/jobs/{job['id']}/events", headers={**bearer(service.key), "Last-Event-ID": "abc"})
        assert r.status_code == 422 and r.json()["errors"][0]["loc"] == ["header", "Last-Event-ID"]
        r = http.get(f"/v1/jobs/{job['id']}/events", params={"sinse": 3}, headers=bearer(service.key))
        assert r.status_code == 422 and r.json()["errors"][0]["loc"] == ["query", "sinse"]
    service.wait(job["id"])


def test_a_quiet_stream_sends_keep_alives(api: Service) -> None:
    """No worker: the job stays queued, the stream has nothing to say but pings; dropping it is fine."""
    job = api.submit(small_spec())
    settings = api.settings.model_copy(update={"events_ping_seconds": 0.2})
    with LiveServer(settings) as server, httpx.Client(base_url=server.url, timeout=30) as http:
        context = server.server.config.app.state.context
        lines = []
        with http.stream("GET", f"/v1/jobs/{job['id']}/events", headers=bearer(api.key)) as response:
            for line in response.iter_lines():
                lines.append(line)
                if lines.count(": ping") == 2:
                    assert context.event_streams == 1
                    break
        assert lines[0] == "retry: 1000"
        status = json.loads(next(x for x in lines if x.startswith("data: "))[6:])
        assert status["status"] == "queued" and status["id"] == job["id"]
        # the client left: the server notices and stops polling for it
        deadline = time.monotonic() + 30
        while context.event_streams and time.monotonic() < deadline:
            time.sleep(0.05)
        assert context.event_streams == 0
        assert http.get("/healthz").status_code == 200
    api.client.post(f"/v1/jobs/{job['id']}/cancel")


# --- logs ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("service", ["embedded", "postgres"], indirect=True)
def test_a_jobs_log_keeps_the_trainers_warning_and_the_workers_lines(service: Service) -> None:
    # at a huge tau every edge weighs alike: the distillation loss stays ~0 and the trainer warns
    job = service.submit(small_spec(epochs=3) | {"distillation": {"tau": 1e9}})
    assert service.wait(job["id"])["status"] == "succeeded"
    page = job_logs(service, job["id"])
    lines = page["lines"]
    assert [x["seq"] for x in lines] == list(range(1, len(lines) + 1)) and page["omitted"] == 0
    assert page["next_since"] == lines[-1]["seq"]
    warning = [x for x in lines if x["logger"] == "alignahead.trainer"]
    assert len(warning) == 1 and warning[0]["level"] == "WARNING"
    assert "distillation loss below 1e-06 for the first 3 epoch(s)" in warning[0]["message"]
    text_ = "\n".join(x["message"] for x in lines)
    assert f"job {job['id']}: attempt 1 on worker" in text_ and "loading dataset 'synthetic'" in text_
    assert f"job {job['id']} ends succeeded" in text_
    assert job_logs(service, job["id"], since=lines[-2]["seq"])["lines"] == lines[-1:]
    # the worker's own log says which job a line is about
    worker_log = service.workers[0].log()
    assert f"[job {job['id']}] distillation loss below" in worker_log

    other = service.authorize_other("someone-else")
    r = service.client.get(f"/v1/jobs/{job['id']}/logs", headers=bearer(other))
    assert r.status_code == 404


@pytest.mark.parametrize("service", ["embedded"], indirect=True)
def test_a_failed_jobs_log_holds_its_traceback(service: Service, live: str) -> None:
    up = service.upload(npz_bytes()).json()
    with service.engine.begin() as conn:  # corrupted behind the API's back
        conn.execute(text("UPDATE uploads SET data = :d WHERE id = :id"), {"d": b"PK\x03\x04 garbage", "id": up["id"]})
    job = service.submit(small_spec() | {"dataset": up["dataset_spec"]})
    failed = service.wait(job["id"])
    assert failed["status"] == "failed"
    errors = [x for x in job_logs(service, job["id"])["lines"] if x["level"] == "ERROR"]
    assert len(errors) == 1 and errors[0]["logger"] == "alignahead.worker"
    message = errors[0]["message"]
    assert message.startswith(f"job {job['id']} failed\nTraceback (most recent call last):")
    assert "npz" in message.splitlines()[-1]
    with Client(live, api_key=service.key) as client:  # as the client (and the CLI's `logs`) read it
        assert client.job(job["id"]).logs()[-1]["seq"] >= errors[0]["seq"]
    service.client.delete(f"/v1/jobs/{job['id']}")
    with service.engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM job_logs WHERE job_id = :id"), {"id": job["id"]}).scalar() == 0


def test_the_log_keeps_its_first_half_and_latest_lines(api: Service) -> None:
    job = api.submit(small_spec())
    sessions = make_sessionmaker(api.engine)
    with transaction(sessions) as s:  # this test is the job's worker
        claim = jobcore.claim(s, job["id"], worker="test", lease=Lease(60, 600))
    assert claim is not None
    stamp = api.job(job["id"])["created_at"]
    from datetime import datetime

    at = datetime.fromisoformat(stamp)
    for start in range(1, 2501, 100):
        lines = [{"seq": i, "at": at, "level": "INFO", "logger": "alignahead.test", "message": f"line {i}"}
                 for i in range(start, start + 100)]  # fmt: skip
        with transaction(sessions) as s:
            assert jobcore.append_logs(s, claim, lines, max_lines=10)
    page = job_logs(api, job["id"])
    assert [x["seq"] for x in page["lines"]] == [1, 2, 3, 4, 5, 2496, 2497, 2498, 2499, 2500]
    assert page["lines"][-1]["message"] == "line 2500" and page["omitted"] == 2490
    with transaction(sessions) as s:  # a worker that lost the job writes nothing
        jobcore.finish(s, claim, jobcore.JobStatus.CANCELLED)
        assert not jobcore.append_logs(s, claim, lines, max_lines=10)


def test_a_long_line_keeps_its_start_and_end() -> None:
    text_ = "start " + "x" * 10_000 + " end"
    clipped = clip(text_, 200)
    assert len(clipped) <= 200 and clipped.startswith("start ") and clipped.endswith(" end")
    assert "characters cut" in clipped and clip("short", 200) == "short"
