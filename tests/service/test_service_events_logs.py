"""A job's live events (Server-Sent Events over real HTTP) and its captured logs, with a real worker."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
from client_helpers import LiveServer
from httpx_sse import EventSource
from sqlalchemy import event, text
from svc_helpers import Service, bearer, make_key, npz_bytes, small_spec

from alignahead.client import Client, RetryPolicy
from alignahead.metrics import VALUES as metric_values
from alignahead.metrics import EpochMetrics
from service import admin
from service.api import events
from service.core import jobcore, keys
from service.core.db import make_sessionmaker, transaction
from service.core.jobcore import Lease
from service.core.models import MetricRow
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
    end_at: float = 0.0  # time.monotonic() when the end event came
    closed: bool = False  # the server closed the stream


def read_events(url: str, key: str, job_id: str, *, last_id: str | None = None, stop_after_metrics: int = 0,
                params: dict[str, Any] | None = None, opened: threading.Event | None = None) -> Received:  # fmt: skip
    """Read a job's stream; with stop_after_metrics, drop the connection after that many rows; `opened`
    is set at the first status event."""
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
                    if opened is not None:
                        opened.set()
                elif sse.event == "end":
                    got.end, got.end_at = sse.json(), time.monotonic()
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
        while (context.event_streams or len(context.feeds)) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert context.event_streams == 0 and len(context.feeds) == 0  # its job's reader stopped too
        assert http.get("/healthz").status_code == 200
    api.client.post(f"/v1/jobs/{job['id']}/cancel")


class Statements:
    """Counts the SQL statements an engine sends (from any thread)."""

    def __init__(self, engine: Any) -> None:
        self.count = 0
        self._lock = threading.Lock()
        event.listen(engine, "before_cursor_execute", self._seen)

    def _seen(self, *_args: Any) -> None:
        with self._lock:
            self.count += 1


def wait_until(check: Any, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def metric_rows(epoch: int) -> list[EpochMetrics]:
    return [EpochMetrics(epoch=epoch, student=s, seconds=0.1, **{n: 0.5 / epoch for n in metric_values})
            for s in (0, 1)]  # fmt: skip


def test_many_streams_share_one_reader_and_each_gets_every_row_once(api: Service) -> None:
    """12 streams on one job: one feed reads it (two statements a round, whatever the number of
    streams), and their key is verified again once per auth cache lapse, not once per stream; the test
    trains the job itself, and every stream gets every row once, then the end."""
    job = api.submit(small_spec(epochs=6))
    n = 12
    settings = api.settings.model_copy(update={"auth_cache_seconds": 0.5})
    with LiveServer(settings) as server:
        context = server.server.config.app.state.context
        got: list[Received] = [Received() for _ in range(n)]
        opened = [threading.Event() for _ in range(n)]

        def follow(i: int) -> None:
            got[i] = read_events(server.url, api.key, job["id"], opened=opened[i])

        threads = [threading.Thread(target=follow, args=(i,)) for i in range(n)]
        for t in threads:
            t.start()
        assert all(o.wait(60) for o in opened)
        feeds = list(context.feeds)
        assert len(feeds) == 1 and feeds[0].watchers == n
        feed, statements = feeds[0], Statements(context.engine)
        rounds, since = feed.rounds, time.monotonic()
        wait_until(lambda: feed.rounds >= rounds + 5)  # quiet rounds: reads of the feed only

        sessions = make_sessionmaker(api.engine)
        lease = Lease(60, 600)
        with transaction(sessions) as s:  # this test is the job's worker
            claim = jobcore.claim(s, job["id"], worker="test", lease=lease)
        assert claim is not None
        for epoch in range(1, 7):
            with transaction(sessions) as s:
                jobcore.record_epoch(s, claim, lease, metric_rows(epoch), epoch=epoch, summaries=[], state=None)
            wait_until(lambda: feed.latest.job.progress.epoch >= epoch)  # noqa: B023 - used at once
        with transaction(sessions) as s:
            assert jobcore.finish(s, claim, jobcore.JobStatus.SUCCEEDED)
        for t in threads:
            t.join(timeout=60)
        read, lapses = feed.rounds - rounds, (time.monotonic() - since) / settings.auth_cache_seconds + 1
        # the feed's two a round, and a key check's two per lapse of the cache: not n times either
        assert statements.count <= 2 * (read + 1) + 2 * lapses, (statements.count, read, lapses)
        assert len(context.feeds) == 0

    stored = api.metrics(job["id"])["rows"]
    assert [(r["epoch"], r["student"]) for r in stored] == [(e, s) for e in range(1, 7) for s in (0, 1)]
    for each in got:
        assert each.metrics == stored and each.ids == [str(r["seq"]) for r in stored]
        assert each.closed and each.kinds[-2:] == ["status", "end"] and each.end == {"status": "succeeded"}
        seen = [(s["status"], s["progress"]["epoch"]) for s in each.statuses]
        assert len(seen) == len(set(seen)) and seen[0] == ("queued", 0) and seen[-1] == ("succeeded", 6)
        assert [e for _, e in seen] == sorted(e for _, e in seen)  # each change once, never backwards


def test_a_stream_far_behind_reads_its_own_pages_then_ends(api: Service) -> None:
    """2,050 rows stored before the stream opens (more than the feed holds, more than a page): the stream
    reads them from the database a page at a time, each once and in order, then the status and the end."""
    job = api.submit(small_spec(epochs=1025))
    with api.engine.begin() as conn:
        conn.execute(
            MetricRow.__table__.insert(),
            [
                {"job_id": job["id"], "created_at": datetime.now(UTC), **asdict(row)}
                for e in range(1, 1026)
                for row in metric_rows(e)
            ],
        )
    assert api.client.post(f"/v1/jobs/{job['id']}/cancel").status_code == 200  # finished: the feed reads no more
    with LiveServer(api.settings) as server:
        got = read_events(server.url, api.key, job["id"], params={"since": 0})
    stored = [r["seq"] for r in api.metrics(job["id"], since=0, limit=10_000)["rows"]]
    assert [m["seq"] for m in got.metrics] == stored and len(stored) == 2050
    assert got.kinds[-2:] == ["status", "end"] and got.end == {"status": "cancelled"} and got.closed


def test_a_revoked_keys_stream_ends_within_the_auth_cache_time(api: Service) -> None:
    """Two streams on a queued job: the one whose key is revoked (the admin command's code) ends with an
    `end` event saying so once the auth cache would ask again; the other, opened first and so checked
    first, goes on until the job ends."""
    settings = api.settings.model_copy(update={"auth_cache_seconds": 2.0})
    job = api.submit(small_spec())
    doomed = make_key(settings, "tests")  # the tenant of api.key: it sees the job
    with LiveServer(settings) as server:
        got: dict[str, Received] = {}
        opened = {"kept": threading.Event(), "doomed": threading.Event()}

        def follow(name: str, key: str) -> None:
            got[name] = read_events(server.url, key, job["id"], opened=opened[name])

        kept = threading.Thread(target=follow, args=("kept", api.key))
        kept.start()
        assert opened["kept"].wait(60)
        revoked = threading.Thread(target=follow, args=("doomed", doomed))
        revoked.start()
        assert opened["doomed"].wait(60)

        admin.revoke(settings, keys.key_id_of(doomed) or "")
        at = time.monotonic()
        revoked.join(timeout=60)
        ended = got["doomed"]
        assert ended.end == {"status": None, "reason": events.REVOKED} and ended.closed
        assert ended.end_at - at <= settings.auth_cache_seconds + 1.5  # within the cache's time (+ a loaded machine)
        with httpx.Client(base_url=server.url, timeout=30) as http:  # as its other requests are refused
            assert http.get(f"/v1/jobs/{job['id']}", headers=bearer(doomed)).status_code == 401

        assert kept.is_alive()  # its key was checked before the revoked one's, and holds
        assert api.client.post(f"/v1/jobs/{job['id']}/cancel").status_code == 200
        kept.join(timeout=60)
        assert got["kept"].end == {"status": "cancelled"} and got["kept"].statuses[-1]["status"] == "cancelled"


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
