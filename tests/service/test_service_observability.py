"""What an operator sees: Prometheus metrics of the API and of a worker, and JSON logs that follow one
request id from the API's answer to the worker's lines for its job.

The real thing: the API as uvicorn with two worker processes (multiprocess metrics), a Celery worker
serving the cpu queue only (so a cuda job stays queued), both logging JSON lines to files.
"""

from __future__ import annotations

import json
import re
import shutil
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.parser import text_string_to_metric_families
from pydantic import SecretStr
from sqlalchemy import func, select
from svc_helpers import (
    FINISHED,
    ApiServer,
    Service,
    Worker,
    bearer,
    embedded_settings,
    free_port,
    long_spec,
    make_key,
    migrate,
    small_spec,
)

from service.api.app import create_app
from service.core.db import make_engine
from service.core.models import ApiKey, Job
from service.core.settings import Settings

TOKEN = "operator-scrape-token"
HEX32 = re.compile(r"^[0-9a-f]{32}$")


@dataclass
class Observed:
    settings: Settings
    api: ApiServer
    worker: Worker
    key: str
    tenant_id: str
    folder: Path
    engine: Any

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key}"}

    def get(self, path: str, **kwargs: Any) -> httpx.Response:
        """A request on a fresh connection (uvicorn's processes share the listening socket)."""
        headers = {**self.headers, **kwargs.pop("headers", {})}
        return httpx.get(f"{self.api.url}{path}", headers=headers, timeout=30, **kwargs)

    def submit(self, spec: dict[str, Any], **headers: str) -> httpx.Response:
        r = httpx.post(f"{self.api.url}/v1/jobs", json=spec, headers={**self.headers, **headers}, timeout=30)
        assert r.status_code == 201, r.text
        return r

    def wait(self, job_id: str, until: Any = FINISHED, timeout: float = 180) -> dict[str, Any]:
        check = until if callable(until) else (lambda j: j["status"] in until)
        deadline = time.monotonic() + timeout
        while True:
            job = self.get(f"/v1/jobs/{job_id}").json()
            if check(job):
                return job
            assert time.monotonic() < deadline, f"job {job_id} still {job['status']}:\n{self.worker.log()[-3000:]}"
            time.sleep(0.1)

    def cancel(self, job_id: str) -> None:
        r = httpx.post(f"{self.api.url}/v1/jobs/{job_id}/cancel", headers=self.headers, timeout=30)
        assert r.status_code in (200, 202), r.text


@pytest.fixture(scope="module")
def observed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Observed]:
    folder = tmp_path_factory.mktemp("observed")
    settings = embedded_settings(
        folder,
        metrics_token=TOKEN,
        metrics_dir=folder / "prometheus",
        metrics_cache_seconds=0.0,
        worker_metrics_port=free_port(),
        log_format="json",
    )
    migrate(settings.database_url)
    key = make_key(settings, "observers")
    engine = make_engine(settings.database_url)
    worker = Worker(settings, folder / "worker.log", "w-obs", queues=("cpu",))
    api = ApiServer(settings, folder / "api.log", key=key, workers=2)
    try:
        api.wait_ready()
        worker.wait_ready()
        with engine.connect() as conn:
            tenant_id = conn.execute(select(ApiKey.tenant_id)).scalar_one()
        yield Observed(settings, api, worker, key, tenant_id, folder, engine)
    finally:
        api.stop()
        worker.stop()
        engine.dispose()


def json_lines(path: Path) -> list[dict[str, Any]]:
    out = []
    for line in path.read_text(errors="replace").splitlines():
        if line.startswith("{"):
            out.append(json.loads(line))
    return out


Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def parse(text: str) -> Samples:
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    """The sum over the samples of `name` whose labels include `labels` (0 if there are none)."""
    want = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and want <= ls)


def scrape_api(obs: Observed) -> Samples:
    r = httpx.get(f"{obs.api.url}/metrics", headers={"Authorization": f"Bearer {TOKEN}"}, timeout=30)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/plain")
    return parse(r.text)


def scrape_worker(obs: Observed) -> Samples:
    r = httpx.get(f"http://127.0.0.1:{obs.settings.worker_metrics_port}/metrics", timeout=30)
    assert r.status_code == 200, r.text
    return parse(r.text)


# --- request ids and JSON logs ------------------------------------------------------------------------


def test_one_request_id_from_the_answer_to_the_workers_log_lines(observed: Observed) -> None:
    rid = f"trace-{uuid.uuid4().hex[:8]}.submit"
    r = observed.submit(small_spec(epochs=3), **{"X-Request-ID": rid})
    assert r.headers["x-request-id"] == rid
    job = r.json()
    assert job["request_id"] == rid
    done = observed.wait(job["id"])
    assert done["status"] == "succeeded" and done["request_id"] == rid

    mine = [line for line in json_lines(observed.worker.log_path) if line.get("job_id") == job["id"]]
    messages = [line["message"] for line in mine]
    assert any("attempt 1 on worker" in m for m in messages), messages
    assert any("ends succeeded" in m for m in messages), messages
    for line in mine:  # every line of the job carries all four fields
        assert (line["request_id"], line["tenant"], line["attempt"]) == (rid, observed.tenant_id, 1), line
        assert {"time", "level", "logger", "message"} <= set(line)
        assert not line["message"].startswith("[job ")  # the text prefix is for people only

    api_lines = [line for line in json_lines(observed.api.log_path) if line.get("job_id") == job["id"]]
    assert api_lines, observed.api.log_path.read_text()[-3000:]
    assert {(a["request_id"], a["tenant"]) for a in api_lines} == {(rid, observed.tenant_id)}


def test_a_request_id_is_made_when_missing_or_unsafe(observed: Observed) -> None:
    made = observed.get("/healthz").headers["x-request-id"]
    assert HEX32.match(made)
    for unsafe in ("x" * 129, "<script>alert(1)</script>", "a b", ""):
        got = observed.get("/healthz", headers={"X-Request-ID": unsafe}).headers["x-request-id"]
        assert HEX32.match(got) and got != made, unsafe
    kept = "0f8fad5b-d9cb-469f-a165-70867728950e"
    assert observed.get("/healthz", headers={"X-Request-ID": kept}).headers["x-request-id"] == kept
    # error answers say it too, the API's 404s and the guards' refusals alike
    missing = observed.get(f"/v1/jobs/{uuid.uuid4().hex}", headers={"X-Request-ID": "err-1"})
    assert missing.status_code == 404 and missing.headers["x-request-id"] == "err-1"


# --- metrics ----------------------------------------------------------------------------------------------


def test_metrics_need_the_operators_token(observed: Observed) -> None:
    url = f"{observed.api.url}/metrics"
    for headers in ({}, observed.headers, {"Authorization": "Bearer not-the-token"}):  # a tenant's key is not it
        r = httpx.get(url, headers=headers, timeout=30)
        assert r.status_code == 401, r.text
        assert "ALIGNAHEAD_METRICS_TOKEN" in r.json()["detail"] and r.json()["errors"] == []


def per_process(obs: Observed, tmp_path: Path) -> list[Samples]:
    """Each API process's own request counters, read from its file in the multiprocess folder."""
    out = []
    for f in sorted((obs.folder / "prometheus").glob("counter_*.db")):
        alone = tmp_path / f.stem
        alone.mkdir(exist_ok=True)
        shutil.copy(f, alone / f.name)
        registry = CollectorRegistry()
        MultiProcessCollector(registry, path=str(alone))
        out.append(parse(generate_latest(registry).decode()))
    return out


def test_the_api_and_a_worker_are_scraped_and_their_numbers_hold(observed: Observed, tmp_path: Path) -> None:
    api0, worker0 = scrape_api(observed), scrape_worker(observed)

    # a job trains 4 epochs on the worker
    epochs = 4
    job = observed.submit(small_spec(epochs=epochs)).json()
    done = observed.wait(job["id"])
    assert done["status"] == "succeeded"
    w = scrape_worker(observed)
    assert (
        value(w, "alignahead_worker_epochs_total", device="cpu")
        - value(worker0, "alignahead_worker_epochs_total", device="cpu")
        == epochs
    )
    seconds = value(w, "alignahead_worker_epoch_seconds_sum") - value(worker0, "alignahead_worker_epoch_seconds_sum")
    assert (
        value(w, "alignahead_worker_epoch_seconds_count") - value(worker0, "alignahead_worker_epoch_seconds_count")
        == epochs
    )
    assert 0 < seconds < 120
    assert (
        value(w, "alignahead_worker_jobs_total", outcome="succeeded")
        - value(worker0, "alignahead_worker_jobs_total", outcome="succeeded")
        == 1
    )
    assert value(w, "alignahead_worker_jobs_running") == 0
    assert value(w, "alignahead_worker_info", worker=done["worker"], device="cpu") == 1

    # requests on fresh connections until both API processes have answered some: the scrape, which
    # one of them answers, must count them all
    route = {"method": "GET", "route": "/v1/jobs/{job_id}/checkpoints", "status": "200"}
    sent = 0
    while True:
        for _ in range(10):
            assert observed.get(f"/v1/jobs/{job['id']}/checkpoints").status_code == 200
        sent += 10
        shares = [value(p, "alignahead_http_requests_total", **route) for p in per_process(observed, tmp_path)]
        if len([n for n in shares if n > 0]) >= 2:
            break
        assert sent < 500, f"every request went to one uvicorn process: {shares}"
    assert sum(shares) == sent
    for _ in range(3):
        assert observed.get(f"/v1/jobs/{uuid.uuid4().hex}").status_code == 404  # via the polling fast path
    assert observed.get("/no/such/path").status_code == 404

    # a cuda job waits in the gpu queue, which no worker serves here
    submitted = time.time()
    gpu = observed.submit(small_spec(device="cuda")).json()
    assert gpu["queue"] == "gpu"

    a = scrape_api(observed)

    def delta(name: str, **labels: str) -> float:
        return value(a, name, **labels) - value(api0, name, **labels)

    assert delta("alignahead_http_requests_total", **route) == sent
    assert delta("alignahead_http_request_duration_seconds_count", **route) == sent
    assert delta("alignahead_http_request_duration_seconds_bucket", le="+Inf", **route) == sent
    assert delta("alignahead_http_requests_total", method="GET", route="/v1/jobs/{job_id}", status="404") == 3
    assert delta("alignahead_http_requests_total", route="unmatched", status="404") == 1
    assert delta("alignahead_http_requests_total", method="POST", route="/v1/jobs", status="201") == 2
    labels = {v for (_, ls) in a for _, v in ls}
    assert not any(job["id"] in v or gpu["id"] in v for v in labels)  # templates, never raw paths

    with observed.engine.connect() as conn:
        counts = conn.execute(select(Job.status, func.count()).where(Job.queue == "cpu").group_by(Job.status))
        stored = {status: n for status, n in counts}
        attempts = conn.execute(select(func.sum(Job.attempts)).where(Job.status == "succeeded")).scalar_one()
    assert value(a, "alignahead_jobs", status="succeeded", queue="cpu") == stored["succeeded"]
    assert value(a, "alignahead_job_attempts", status="succeeded", queue="cpu") == attempts == stored["succeeded"]
    assert value(a, "alignahead_job_lost_workers") == 0
    assert value(a, "alignahead_jobs", status="queued", queue="gpu") == 1
    assert value(a, "alignahead_jobs", status="queued", queue="cpu") == 0
    age = value(a, "alignahead_oldest_queued_job_age_seconds", queue="gpu")
    assert 0 < age <= time.time() - submitted + 5  # the database's clock, a few ms apart from ours
    assert value(a, "alignahead_oldest_queued_job_age_seconds", queue="cpu") == 0

    # while a long job runs: the worker says so, and so does the job table
    running = observed.submit(long_spec(epochs=300)).json()
    observed.wait(running["id"], until=lambda j: j["status"] == "running" and j["progress"]["epoch"] >= 1)
    assert value(scrape_worker(observed), "alignahead_worker_jobs_running") == 1
    assert value(scrape_api(observed), "alignahead_jobs", status="running", queue="cpu") == 1
    observed.cancel(running["id"])
    observed.cancel(gpu["id"])
    assert observed.wait(running["id"])["status"] == "cancelled"
    w = scrape_worker(observed)
    assert value(w, "alignahead_worker_jobs_running") == 0
    assert (
        value(w, "alignahead_worker_jobs_total", outcome="cancelled")
        - value(worker0, "alignahead_worker_jobs_total", outcome="cancelled")
        == 1
    )
    a = scrape_api(observed)
    assert value(a, "alignahead_jobs", status="queued") == 0
    assert value(a, "alignahead_oldest_queued_job_age_seconds", queue="gpu") == 0


# --- in-process: the defaults ----------------------------------------------------------------------------


def test_metrics_are_off_without_a_token_and_request_ids_are_stored(api: Service) -> None:
    r = api.client.get("/metrics")
    assert r.status_code == 404 and "ALIGNAHEAD_METRICS_TOKEN" in r.json()["detail"]
    r = api.client.post("/v1/jobs", json=small_spec(), headers={"X-Request-ID": "submit-42"})
    assert r.status_code == 201 and r.headers["x-request-id"] == "submit-42"
    assert api.job(r.json()["id"])["request_id"] == "submit-42"
    study = {"spec": small_spec(), "seeds": 2}
    r = api.client.post("/v1/studies", json=study, headers={"X-Request-ID": "study-7"})
    assert r.status_code == 201, r.text
    jobs = api.client.get("/v1/jobs", params={"study": r.json()["id"]}).json()["jobs"]
    assert [j["request_id"] for j in jobs] == ["study-7", "study-7"]
    # a tenant's error answer carries the id too
    assert api.client.get("/v1/jobs/nope", headers={"X-Request-ID": "e-1"}).headers["x-request-id"] == "e-1"


def test_the_job_table_as_scraped_equals_the_database_on_each_backend(service: Service) -> None:
    """SQLite and PostgreSQL: every (status, queue) the database holds, as /metrics says it."""
    job = service.submit(small_spec(epochs=2))
    assert service.wait(job["id"])["status"] == "succeeded"
    settings = service.settings.model_copy(update={"metrics_token": SecretStr(TOKEN), "metrics_cache_seconds": 0.0})

    def table() -> dict[tuple[str, str], tuple[int, int, int]]:
        with service.engine.connect() as conn:
            rows = conn.execute(
                select(
                    Job.status, Job.queue, func.count(), func.sum(Job.attempts), func.sum(Job.worker_losses)
                ).group_by(Job.status, Job.queue)
            ).all()
        return {(r[0], r[1]): (int(r[2]), int(r[3]), int(r[4])) for r in rows}

    with TestClient(create_app(settings)) as client:
        for _ in range(100):  # other tests' jobs may still be moving: until a scrape falls between equal reads
            before = table()
            r = client.get("/metrics", headers=bearer(TOKEN))
            assert r.status_code == 200, r.text
            if table() == before:
                break
    samples = parse(r.text)
    assert before[("succeeded", "cpu")][0] >= 1
    for (status, queue), (jobs, attempts, losses) in before.items():
        assert value(samples, "alignahead_jobs", status=status, queue=queue) == jobs
        assert value(samples, "alignahead_job_attempts", status=status, queue=queue) == attempts
        assert value(samples, "alignahead_job_lost_workers", status=status, queue=queue) == losses
    assert value(samples, "alignahead_jobs") == sum(v[0] for v in before.values())
    if ("queued", "cpu") not in before:
        assert value(samples, "alignahead_oldest_queued_job_age_seconds", queue="cpu") == 0


def test_the_job_table_is_read_once_per_cache_period(api: Service) -> None:
    """Scrapes within metrics_cache_seconds reuse one reading: a job submitted meanwhile shows later."""
    settings = api.settings.model_copy(update={"metrics_token": SecretStr(TOKEN), "metrics_cache_seconds": 3600.0})
    with TestClient(create_app(settings), headers=bearer(api.key)) as client:
        first = parse(client.get("/metrics", headers=bearer(TOKEN)).text)
        assert client.post("/v1/jobs", json=small_spec()).status_code == 201
        again = parse(client.get("/metrics", headers=bearer(TOKEN)).text)
    queued = value(first, "alignahead_jobs", status="queued", queue="cpu")
    assert value(again, "alignahead_jobs", status="queued", queue="cpu") == queued  # the same reading
    fresh = settings.model_copy(update={"metrics_cache_seconds": 0.0})
    with TestClient(create_app(fresh)) as client:
        now = parse(client.get("/metrics", headers=bearer(TOKEN)).text)
    assert value(now, "alignahead_jobs", status="queued", queue="cpu") == queued + 1
