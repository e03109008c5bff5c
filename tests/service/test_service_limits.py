"""Every limit refuses with a message that names it and its setting; quotas answer 429 with
Retry-After; a decompression bomb is refused with the API process's memory bounded; attempts and
progress deadlines end hopeless jobs."""

from __future__ import annotations

import io
import json
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import psutil
import pytest
import scipy.sparse as sp
from fastapi.testclient import TestClient
from sqlalchemy import select
from svc_helpers import (
    ApiServer,
    Service,
    bearer,
    embedded_settings,
    long_spec,
    make_key,
    migrate,
    npz_bytes,
    settings_env,
    small_spec,
    temporary_postgres_database,
    zip_bomb,
)

from alignahead.metrics import EpochMetrics
from alignahead.spec import JobSpec
from service.api.app import create_app
from service.core import jobcore, keys
from service.core.db import db_now, make_engine, make_sessionmaker, transaction
from service.core.limits import GraphSize, estimate_bytes
from service.core.models import Job
from service.core.settings import Settings

TIGHT = {
    "max_nodes": 1000,
    "max_edges": 20_000,
    "max_features": 64,
    "max_graphs": 5,
    "max_students": 3,
    "max_hidden_layers": 3,
    "max_width": 128,
    "max_epochs": 100,
    "max_json_bytes": 4096,
    "max_json_depth": 8,
}


@pytest.fixture(scope="module")
def tight(api: Service) -> Iterator[TestClient]:
    """The `api` database behind an app with small limits, and a key of its own."""
    settings = api.settings.model_copy(update=TIGHT)
    with TestClient(create_app(settings), headers=bearer(make_key(settings, "tight"))) as client:
        yield client


def _spec(**sections: dict[str, Any]) -> dict[str, Any]:
    spec = small_spec()
    for name, values in sections.items():
        if name == "synthetic":
            spec["dataset"]["synthetic"].update(values)
        elif name == "student":
            spec["students"][0].update(values)
        else:
            spec[name] = {**spec.get(name, {}), **values}
    return spec


@pytest.mark.parametrize(
    "spec,setting,loc",
    [
        (_spec(synthetic={"num_nodes": 600, "num_graphs": 3}), "ALIGNAHEAD_MAX_NODES", ["body", "dataset"]),
        (_spec(synthetic={"num_nodes": 900, "avg_degree": 40}), "ALIGNAHEAD_MAX_EDGES", ["body", "dataset"]),
        (_spec(synthetic={"num_features": 65}), "ALIGNAHEAD_MAX_FEATURES", ["body", "dataset"]),
        (_spec(synthetic={"num_nodes": 100, "num_graphs": 6}), "ALIGNAHEAD_MAX_GRAPHS", ["body", "dataset"]),
        (_spec(student={"count": 4}), "ALIGNAHEAD_MAX_STUDENTS", ["body", "students"]),
        (_spec(student={"hidden_layers": 4}), "ALIGNAHEAD_MAX_HIDDEN_LAYERS", ["body", "students", 0]),
        (
            _spec(student={"arch": "gat", "hidden_size": 64, "heads": 3}),
            "ALIGNAHEAD_MAX_WIDTH",
            ["body", "students", 0],
        ),
        (_spec(training={"epochs": 101}), "ALIGNAHEAD_MAX_EPOCHS", ["body", "training", "epochs"]),
    ],
)
def test_spec_limits_name_their_setting(tight: TestClient, spec: dict, setting: str, loc: list) -> None:
    before = len(tight.get("/v1/jobs").json()["jobs"])
    r = tight.post("/v1/jobs", json=spec)
    assert r.status_code == 422, r.text
    body = r.json()
    assert setting in body["detail"] and "limit" in body["detail"], body
    assert body["errors"][0]["loc"][: len(loc)] == loc
    assert len(tight.get("/v1/jobs").json()["jobs"]) == before  # nothing stored


def test_memory_estimate_refuses_what_cannot_fit(api: Service) -> None:
    settings = api.settings.model_copy(update={"worker_memory_bytes": 2 * 2**30, "max_width": 10**6})
    big = _spec(student={"arch": "gat", "hidden_size": 256, "heads": 8, "hidden_layers": 3},
                synthetic={"num_nodes": 100_000, "avg_degree": 20})  # fmt: skip
    with TestClient(create_app(settings), headers=api.client.headers) as client:
        r = client.post("/v1/jobs", json=big)
        assert r.status_code == 422 and "ALIGNAHEAD_WORKER_MEMORY_BYTES" in r.json()["detail"], r.text
        assert "GiB" in r.json()["detail"]
        assert client.post("/v1/jobs", json=small_spec()).status_code == 201  # a small one fits


def test_parallel_jobs_fit_the_devices_a_worker_offers(api: Service) -> None:
    parallel = _spec(distillation={"schedule": "simultaneous"}, training={"parallel": "students", "ranks": 2})
    r = api.client.post("/v1/jobs", json=parallel)  # the default worker offers one device
    assert r.status_code == 422 and "ALIGNAHEAD_WORKER_DEVICES" in r.json()["detail"], r.text
    assert r.json()["errors"][0]["loc"][:3] == ["body", "training", "ranks"]
    alternating = _spec(training={"parallel": "students"})  # the default schedule is alternating
    r = api.client.post("/v1/jobs", json=alternating)
    assert r.status_code == 422 and "sequential by definition" in r.json()["detail"], r.text
    settings = api.settings.model_copy(update={"worker_devices": 2})
    with TestClient(create_app(settings), headers=api.client.headers) as client:
        assert client.post("/v1/jobs", json=parallel).status_code == 201


def test_memory_estimate_is_per_rank() -> None:
    spec = JobSpec.model_validate(
        _spec(student={"count": 4}, distillation={"schedule": "simultaneous"}, training={"parallel": "students"})
    )
    size = GraphSize(nodes=100_000, edges=2_000_000, features=64, classes=4, graphs=1)
    one, per_rank = estimate_bytes(spec, size), estimate_bytes(spec, size, ranks=2)
    assert per_rank < one < 2 * per_rank  # two students' passes of four, the graph and overhead in each


# ru_maxrss would count the parent's pages: vfork shares its memory until exec, so the child's
# high-water mark starts at pytest's own size. VmHWM, reset on entry, is this process's alone.
MEASURE = """
import json, sys
open("/proc/self/clear_refs", "w").write("5")
import torch
torch.set_num_threads(1)
from alignahead.datasets import load_dataset
from alignahead.spec import JobSpec
from alignahead.trainer import Trainer
spec = JobSpec.model_validate(json.loads(sys.argv[1]))
dataset = load_dataset(spec.dataset, seed=0)
g = dataset.train[0]
Trainer(spec, dataset).run()
print(json.dumps([g.num_nodes(), g.num_edges(), dataset.num_features, dataset.num_classes,
                  int(open("/proc/self/status").read().split("VmHWM:")[1].split()[0]) * 1024]))
"""


@pytest.mark.parametrize("arch", ["gcn", "gat"])
def test_memory_estimate_is_an_upper_bound_of_a_real_run(arch: str) -> None:
    """The estimate against the peak RSS of a fresh process that trains the spec as a worker would."""
    import json
    import subprocess
    import sys

    raw = long_spec(epochs=2, num_nodes=8000, width=64)
    raw["students"][0].update(arch=arch, heads=2)
    out = subprocess.run([sys.executable, "-c", MEASURE, json.dumps(raw)], capture_output=True, text=True,
                         timeout=300, env=settings_env(Settings()))  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    n, e, f, c, peak = json.loads(out.stdout.strip().splitlines()[-1])
    estimate = estimate_bytes(JobSpec.model_validate(raw), GraphSize(n, e, f, c, 1))
    print(f"{arch}: peak RSS {peak / 2**20:.0f} MiB, estimate {estimate / 2**20:.0f} MiB")
    assert peak <= estimate <= 6 * peak  # generous, but not absurdly so


# --- uploads ------------------------------------------------------------------------------------


def _sparse_npz(n: int, f: int) -> bytes:
    rng = np.random.default_rng(0)
    adj = sp.random(n, n, density=0.05, random_state=0, format="csr", dtype=np.float32)
    attr = sp.random(n, f, density=1e-4, random_state=1, format="csr", dtype=np.float32)
    buf = io.BytesIO()
    np.savez(buf, adj_data=adj.data, adj_indices=adj.indices, adj_indptr=adj.indptr, adj_shape=np.array(adj.shape),
             attr_data=attr.data, attr_indices=attr.indices, attr_indptr=attr.indptr, attr_shape=np.array(attr.shape),
             labels=rng.integers(0, 3, n))  # fmt: skip
    return buf.getvalue()


def test_upload_limits_name_their_setting(api: Service, tight: TestClient) -> None:
    def upload(client: TestClient, data: bytes) -> Any:
        return client.post("/v1/datasets", files={"file": ("g.npz", data, "application/octet-stream")})

    r = upload(tight, npz_bytes(n=60))
    assert r.status_code == 201, r.text
    too_wide = _sparse_npz(60, 65)
    r = upload(tight, too_wide)
    assert r.status_code == 422 and "ALIGNAHEAD_MAX_FEATURES" in r.json()["detail"]
    assert r.json()["errors"][0]["loc"] == ["body", "file"]

    settings = api.settings.model_copy(update={"max_unpacked_bytes": 4_000_000, "max_upload_bytes": 10**7})
    with TestClient(create_app(settings), headers=api.client.headers) as client:
        # sparse on disk, but 400 x 20,000 float32 = 32 MB once the worker makes it dense
        r = upload(client, _sparse_npz(400, 20_000))
        assert r.status_code == 413 and "dense" in r.json()["detail"], r.text
        assert "ALIGNAHEAD_MAX_UNPACKED_BYTES" in r.json()["detail"]
        r = upload(client, zip_bomb(8_000_000))
        assert r.status_code == 413 and "ALIGNAHEAD_MAX_UNPACKED_BYTES" in r.json()["detail"]


def test_decompression_bomb_refused_with_bounded_memory(tmp_path) -> None:
    """1.8 GB inflating from a 1.75 MB upload, against a real API process with the default limits: refused
    from the declared sizes, without inflating, within a few MB of RSS and a fraction of a second of CPU."""
    settings = embedded_settings(tmp_path)
    migrate(settings.database_url)
    api = ApiServer(settings, tmp_path / "api.log", key=make_key(settings, "bomber"))
    try:
        api.wait_ready()
        bomb = zip_bomb(1_800_000_000)
        assert len(bomb) < 2_000_000
        proc = psutil.Process(api.proc.pid)  # type: ignore[union-attr]
        with api.client() as client:
            client.get("/v1/datasets")  # warm: first-request imports are not the bomb's doing
            rss0, cpu0 = proc.memory_info().rss, sum(proc.cpu_times()[:2])
            r = client.post("/v1/datasets", files={"file": ("bomb.npz", bomb, "application/octet-stream")})
            rss1, cpu1 = proc.memory_info().rss, sum(proc.cpu_times()[:2])
            assert r.status_code == 413, r.text
            assert "ALIGNAHEAD_MAX_UNPACKED_BYTES" in r.json()["detail"]
            assert client.get("/v1/datasets").json()["uploads"] == []
        growth = rss1 - rss0
        print(
            f"bomb: API RSS {rss0 / 2**20:.1f} -> {rss1 / 2**20:.1f} MiB (+{growth / 2**20:.1f}), "
            f"CPU {cpu1 - cpu0:.2f} s"
        )
        assert growth < 64 * 2**20, growth  # the body itself is 1.75 MB; inflating would be 1.8 GB
        assert cpu1 - cpu0 < 5.0
    finally:
        api.kill()


def test_json_body_size_and_depth(tight: TestClient) -> None:
    spec = small_spec()
    r = tight.post("/v1/jobs", content=b" " * 5000 + str(spec).encode(), headers={"content-type": "application/json"})
    assert r.status_code == 413 and "ALIGNAHEAD_MAX_JSON_BYTES" in r.json()["detail"]
    deep = "[" * 9 + "]" * 9
    r = tight.post("/v1/jobs", content=deep, headers={"content-type": "application/json"})
    assert r.status_code == 422 and "ALIGNAHEAD_MAX_JSON_DEPTH" in r.json()["detail"]
    assert r.json()["errors"][0]["loc"] == ["body"]
    # brackets inside strings do not count
    named = {**spec, "name": "[" * 100}
    assert tight.post("/v1/jobs", json=named).status_code == 201


@pytest.mark.parametrize("content_type", ["Application/JSON", "APPLICATION/JSON; charset=UTF-8",
                                          "application/merge-patch+json", "text/plain", None])  # fmt: skip
def test_every_body_is_capped_whatever_its_content_type(tight: TestClient, content_type: str | None) -> None:
    """Media types compare case-insensitively, and FastAPI reads a body of any type (and parses one
    without a type as JSON), so the size and depth caps hold for all of them."""
    headers = {"content-type": content_type} if content_type else {}
    spec = json.dumps(small_spec()).encode()
    jobs_before = len(tight.get("/v1/jobs", params={"limit": 1000}).json()["jobs"])
    r = tight.post("/v1/jobs", content=spec + b" " * 5000, headers=headers)  # trailing whitespace counts
    assert r.status_code == 413 and "ALIGNAHEAD_MAX_JSON_BYTES" in r.json()["detail"], r.text
    chunks = iter([spec, b" " * 3000, b" " * 3000])  # no Content-Length: counted as it streams
    r = tight.post("/v1/jobs", content=chunks, headers=headers)
    assert r.status_code == 413 and "ALIGNAHEAD_MAX_JSON_BYTES" in r.json()["detail"], r.text
    r = tight.post("/v1/jobs", content=b"[" * 9 + b"]" * 9, headers=headers)
    assert r.status_code == 422 and "ALIGNAHEAD_MAX_JSON_DEPTH" in r.json()["detail"], r.text
    assert len(tight.get("/v1/jobs", params={"limit": 1000}).json()["jobs"]) == jobs_before
    if content_type and "json" in content_type.lower():  # within the caps, the JSON type is JSON
        r = tight.post("/v1/jobs", content=spec, headers=headers)
        assert r.status_code == 201, r.text


def test_a_multipart_body_is_capped_on_every_route(api: Service) -> None:
    """A multipart body sent to a JSON route is held to the upload cap as it streams (FastAPI would read
    all of it), and the upload route's own cap still names its setting."""
    big = b"x" * (api.settings.max_upload_bytes + 70_000)
    for path in ("/v1/jobs", "/v1/datasets", "/v1/studies"):
        r = api.client.post(path, files={"file": ("graph.npz", big, "application/octet-stream")})
        assert r.status_code == 413 and "ALIGNAHEAD_MAX_UPLOAD_BYTES" in r.json()["detail"], (path, r.text)


# --- quotas ---------------------------------------------------------------------------------------


def test_active_jobs_per_tenant(api: Service) -> None:
    settings = api.settings.model_copy(update={"max_active_jobs": 2})
    with TestClient(create_app(settings), headers=bearer(make_key(settings, "busy"))) as client:
        first = client.post("/v1/jobs", json=small_spec()).json()
        assert client.post("/v1/jobs", json=small_spec()).status_code == 201
        r = client.post("/v1/jobs", json=small_spec())
        assert r.status_code == 429 and "ALIGNAHEAD_MAX_ACTIVE_JOBS" in r.json()["detail"]
        assert int(r.headers["retry-after"]) >= 1
        client.post(f"/v1/jobs/{first['id']}/cancel")  # one fewer active: room again
        assert client.post("/v1/jobs", json=small_spec()).status_code == 201
        other = client.post("/v1/jobs", json=small_spec(), headers=bearer(make_key(settings, "calm")))
        assert other.status_code == 201  # another tenant is not affected


def test_submissions_per_minute_per_tenant(api: Service) -> None:
    settings = api.settings.model_copy(update={"max_submissions_per_minute": 3, "max_active_jobs": 100})
    with TestClient(create_app(settings), headers=bearer(make_key(settings, "hasty"))) as client:
        h = {"Idempotency-Key": "once"}
        assert client.post("/v1/jobs", json=small_spec(), headers=h).status_code == 201
        assert client.post("/v1/jobs", json=small_spec()).status_code == 201
        assert client.post("/v1/jobs", json=small_spec()).status_code == 201
        r = client.post("/v1/jobs", json=small_spec())
        assert r.status_code == 429 and "ALIGNAHEAD_MAX_SUBMISSIONS_PER_MINUTE" in r.json()["detail"]
        assert 1 <= int(r.headers["retry-after"]) <= 20  # one submission every 20 s
        # a replay spends nothing and still answers
        assert client.post("/v1/jobs", json=small_spec(), headers=h).status_code == 200


# --- time, attempts and progress, on both databases -----------------------------------------------


@pytest.fixture(params=["sqlite", "postgres"])
def bare(request: pytest.FixtureRequest, tmp_path) -> Iterator[Any]:
    """A migrated database with no worker and no API: jobcore alone."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'bare.db'}"
        migrate(url)
        yield url
        return
    pg = request.getfixturevalue("postgres_database")  # skips when PostgreSQL is away
    with temporary_postgres_database("alignahead_bare") as url:
        del pg
        migrate(url)
        yield url


def _wait_db(sessions: Any, condition: Any, timeout: float = 30) -> None:
    """Until the condition holds by the database's clock (a state, not a sleep of our own)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with transaction(sessions) as s:
            if s.scalar(select(condition)):
                return
        time.sleep(0.05)
    raise TimeoutError("condition never held")


def test_max_attempts_and_progress_deadline(bare: str) -> None:
    engine = make_engine(bare)
    sessions = make_sessionmaker(engine)
    try:
        with transaction(sessions) as s:
            tenant = keys.ensure_tenant(s, "t").id
            job = jobcore.create(
                s, tenant_id=tenant, spec=JobSpec.model_validate(small_spec()), time_limit_seconds=3600
            )
            job_id = job.id
        dies = jobcore.Lease(lease_seconds=0.2, stall_seconds=600)
        for attempt in (1, 2, 3):
            with transaction(sessions) as s:
                claim = jobcore.claim(s, job_id, worker=f"w{attempt}", lease=dies)
                assert claim is not None and claim.attempts == attempt
                # a sweeper with other settings judges by the lease the owner set, not by its own
                assert jobcore.take_back_stale(s, max_attempts=3) == []
            _wait_db(sessions, select(Job.lease_until < db_now()).where(Job.id == job_id).scalar_subquery())
            with transaction(sessions) as s:
                taken = jobcore.take_back_stale(s, max_attempts=3)
                row = s.get(Job, job_id)
                if attempt < 3:
                    assert taken == [(job_id, "cpu")] and row.status == "queued" and row.worker_losses == attempt
                else:
                    assert taken == [] and row.status == "failed"
                    assert "3 lost workers" in row.error and "ALIGNAHEAD_MAX_ATTEMPTS" in row.error
                    assert "stopped beating" in row.error
            with transaction(sessions) as s:  # the dead worker's late writes are fenced off
                assert not jobcore.heartbeat(s, claim, dies).owned

        # beating but not progressing: taken back although the lease is fresh
        with transaction(sessions) as s:
            job_id = jobcore.create(s, tenant_id=tenant, spec=JobSpec.model_validate(small_spec()),
                                    time_limit_seconds=3600).id  # fmt: skip
        hangs = jobcore.Lease(lease_seconds=600, stall_seconds=0.3)
        with transaction(sessions) as s:
            claim = jobcore.claim(s, job_id, worker="hung", lease=hangs)
        rows = [EpochMetrics(epoch=1, student=i, loss=1.0, task_loss=1.0, distill_loss=0.0, train_score=None,
                             val_score=None, test_score=None, seconds=0.1) for i in (0, 1)]  # fmt: skip
        with transaction(sessions) as s:  # an epoch renews the progress deadline
            out = jobcore.record_epoch(s, claim, hangs, rows, epoch=1, summaries=[], state=None)
            assert out.signals.owned and not out.redone
        with transaction(sessions) as s:  # the same epoch again (a resume) is compared, not written
            again = jobcore.record_epoch(s, claim, hangs, rows, epoch=1, summaries=[], state=None)
            assert again.redone and again.mismatches == []
        _wait_db(sessions, select(Job.progress_until < db_now()).where(Job.id == job_id).scalar_subquery())
        with transaction(sessions) as s:
            assert jobcore.heartbeat(s, claim, hangs).owned  # the heartbeat alone does not help
            assert jobcore.take_back_stale(s, max_attempts=1) == []
            row = s.get(Job, job_id)
            assert row.status == "failed" and "epoch stopped advancing" in row.error
    finally:
        engine.dispose()


def test_wall_clock_limit_fails_the_job_saying_so(service: Service) -> None:
    """Through the real worker: a job past its limit stops and ends failed with the reason."""
    settings = service.settings.model_copy(update={"max_job_seconds": 3.0})
    with TestClient(create_app(settings), headers=service.client.headers) as client:
        job = client.post("/v1/jobs", json=long_spec(epochs=2000, num_nodes=1000)).json()
    done = service.wait(job["id"], timeout=120)
    assert done["status"] == "failed", done
    assert "ALIGNAHEAD_MAX_JOB_SECONDS" in done["error"] and "3 s" in done["error"]
    assert done["progress"]["epoch"] < 2000
    assert len(service.metrics(job["id"], limit=10_000)["rows"]) == 2 * done["progress"]["epoch"]


def test_heartbeat_thread_brings_the_cancel_request(bare: str) -> None:
    """The running job learns of a cancel request from its heartbeat thread: the training step reads an
    event, never the database. The test waits on that event."""
    from celery import Celery

    from worker.context import WorkerContext
    from worker.runner import Flags, Heartbeat

    engine = make_engine(bare)
    sessions = make_sessionmaker(engine)
    settings = Settings(database_url=bare, heartbeat_seconds=0.05, stale_after_seconds=5.0)
    ctx = WorkerContext(settings, engine, sessions, Celery(), "test:0", jobcore.Lease(5.0, 600.0))
    try:
        with transaction(sessions) as s:
            tenant = keys.ensure_tenant(s, "t").id
            job_id = jobcore.create(s, tenant_id=tenant, spec=JobSpec.model_validate(small_spec()),
                                    time_limit_seconds=3600).id  # fmt: skip
            claim = jobcore.claim(s, job_id, worker="test:0", lease=ctx.lease)
        flags = Flags(cancel_requested=False)
        with Heartbeat(ctx, claim, flags) as beat:
            assert beat.beats.wait(10) and not flags.stop()
            with transaction(sessions) as s:
                jobcore.request_cancel(s, s.get(Job, job_id))
            assert flags.cancel.wait(10)
            assert flags.stop() and not flags.lost.is_set()
    finally:
        engine.dispose()
