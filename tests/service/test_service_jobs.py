"""End to end on each backend: a real worker trains real jobs submitted over HTTP."""

from __future__ import annotations

import hashlib
import time

import pytest
import torch
from sqlalchemy import text
from svc_helpers import Service, long_spec, npz_bytes, small_spec

import alignahead
from alignahead.datasets import load_dataset
from alignahead.spec import JobSpec
from alignahead.trainer import score
from service.broker import enqueue


def validation_score(model: torch.nn.Module, spec: JobSpec) -> float:
    """Recompute a student's validation score from scratch, as a user would."""
    dataset = load_dataset(spec.dataset, seed=spec.training.seed)
    num = den = 0.0
    with torch.no_grad():
        for graph in dataset.val:
            mask = graph.ndata["val_mask"]
            logits = model(graph, graph.ndata["feat"])[0]
            n, d = score(logits[mask], graph.ndata["label"][mask], dataset.multilabel)
            num, den = num + n, den + d
    return num / den


def test_job_end_to_end(service: Service) -> None:
    c = service.client
    job = service.submit(small_spec(epochs=5))
    assert job["status"] == "queued"
    done = service.wait(job["id"])
    assert done["status"] == "succeeded", done
    assert done["progress"] == {"epoch": 5, "total": 5} and done["attempts"] == 1 and done["error"] is None
    assert done["created_at"] <= done["started_at"] <= done["finished_at"]

    # metrics: one row per student per epoch, in increasing sequence; `since` returns only newer ones
    rows = service.metrics(job["id"])["rows"]
    assert sorted((r["epoch"], r["student"]) for r in rows) == [(e, s) for e in range(1, 6) for s in (0, 1)]
    seqs = [r["seq"] for r in rows]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
    later = service.metrics(job["id"], since=seqs[3])
    assert [r["seq"] for r in later["rows"]] == seqs[4:] and later["next_since"] == seqs[-1]
    assert service.metrics(job["id"], since=seqs[-1]) == {"job_id": job["id"], "rows": [], "next_since": seqs[-1]}
    page = service.metrics(job["id"], student=1, limit=2)
    assert [r["student"] for r in page["rows"]] == [1, 1] and page["next_since"] == page["rows"][-1]["seq"]

    # the per-student summary agrees with the metric rows
    for s in done["students"]:
        mine = [r for r in rows if r["student"] == s["student"]]
        best = max(mine, key=lambda r: (r["val_score"], -r["epoch"]))
        assert (s["best_val"], s["best_epoch"], s["test_at_best"]) == (
            best["val_score"],
            best["epoch"],
            best["test_score"],
        )

    # checkpoints: listed per student; the download matches its hash and reproduces the score
    listing = c.get(f"/v1/jobs/{job['id']}/checkpoints").json()
    assert [s["student"] for s in listing["students"]] == [0, 1]
    assert all(s["best"] and s["final"] for s in listing["students"])
    spec = JobSpec.model_validate(done["spec"])
    for entry, summary in zip(listing["students"], done["students"], strict=True):
        best = entry["best"]
        assert (best["epoch"], best["score"]) == (summary["best_epoch"], summary["best_val"])
        r = c.get(best["url"])
        assert r.status_code == 200 and r.headers["content-type"] == "application/octet-stream"
        assert int(r.headers["content-length"]) == best["size"] == len(r.content)
        assert hashlib.sha256(r.content).hexdigest() == best["sha256"]
        assert r.headers["etag"] == f'"{best["sha256"]}"'
        again = c.get(best["url"], headers={"If-None-Match": r.headers["etag"]})
        assert again.status_code == 304 and again.content == b""
        model = alignahead.load_student(r.content)
        assert validation_score(model, spec) == pytest.approx(summary["best_val"], abs=1e-12)

    listed = c.get("/v1/jobs", params={"status": "succeeded"}).json()["jobs"]
    assert job["id"] in [j["id"] for j in listed]


def test_cancel_running_job(service: Service) -> None:
    c = service.client
    job = service.submit(long_spec(epochs=400, num_nodes=4000, width=64))  # epochs >> cancel poll
    waiting = service.submit(small_spec())  # queued behind it on the one worker
    service.wait(job["id"], until=lambda j: j["progress"]["epoch"] >= 2, timeout=120)
    assert c.delete(f"/v1/jobs/{job['id']}").status_code == 409

    r = c.post(f"/v1/jobs/{waiting['id']}/cancel")  # a queued job never starts
    assert r.status_code == 200 and r.json()["status"] == "cancelled"

    r = c.post(f"/v1/jobs/{job['id']}/cancel")
    assert r.status_code == 202 and r.json()["cancel_requested"] is True
    at_cancel = r.json()["progress"]["epoch"]  # read in the transaction that stored the request
    done = service.wait(job["id"], timeout=60)
    assert done["status"] == "cancelled", done
    rows = service.metrics(job["id"])["rows"]
    # by design, not timing: the end of the epoch that was running reads the request, and the next
    # step stops (a heartbeat may stop it sooner, inside the epoch)
    assert done["progress"]["epoch"] <= at_cancel + 1, (done["progress"], at_cancel)

    # what it stored stays readable
    assert len(rows) == 2 * done["progress"]["epoch"]
    listing = c.get(f"/v1/jobs/{job['id']}/checkpoints").json()
    best = listing["students"][0]["best"]
    assert best is not None and c.get(best["url"]).status_code == 200
    assert listing["students"][0]["final"] is None  # it never reached the end

    r = c.post(f"/v1/jobs/{job['id']}/cancel")
    assert r.status_code == 409 and "already cancelled" in r.json()["detail"]

    # the queued one never ran, even though its message reached the worker
    time.sleep(1.5)
    skipped = service.job(waiting["id"])
    assert skipped["status"] == "cancelled" and skipped["attempts"] == 0 and skipped["started_at"] is None
    assert service.metrics(waiting["id"])["rows"] == []

    assert c.delete(f"/v1/jobs/{job['id']}").status_code == 204
    assert c.get(f"/v1/jobs/{job['id']}").status_code == 404
    assert c.get(f"/v1/jobs/{job['id']}/metrics").status_code == 404
    with service.engine.connect() as conn:
        for table in ("metrics", "checkpoints", "job_states"):
            n = conn.execute(text(f"SELECT count(*) FROM {table} WHERE job_id = :id"), {"id": job["id"]}).scalar()
            assert n == 0, table


def test_failed_job_reports_why_and_the_worker_goes_on(service: Service) -> None:
    up = service.upload(npz_bytes()).json()
    with service.engine.begin() as conn:  # corrupted behind the API's back
        conn.execute(text("UPDATE uploads SET data = :d WHERE id = :id"), {"d": b"PK\x03\x04 garbage", "id": up["id"]})
    spec = small_spec()
    spec["dataset"] = up["dataset_spec"]
    bad = service.submit(spec)
    good = service.submit(small_spec(epochs=2))

    failed = service.wait(bad["id"])
    assert failed["status"] == "failed"
    assert "npz" in failed["error"] and failed["finished_at"] is not None
    assert service.wait(good["id"])["status"] == "succeeded"
    r = service.client.post(f"/v1/jobs/{bad['id']}/cancel")
    assert r.status_code == 409 and "failed" in r.json()["detail"]
    assert service.client.delete(f"/v1/datasets/{up['id']}").status_code == 204


def test_redelivered_message_of_a_finished_job_is_dropped(service: Service) -> None:
    """The database, not the broker, decides: a duplicate message changes nothing."""
    job = service.submit(small_spec(epochs=1))
    assert service.wait(job["id"])["status"] == "succeeded"
    worker = service.workers[0]
    before = worker.log().count(f"job {job['id']}: not claimable")
    context = service.client.app.state.context  # type: ignore[attr-defined]
    enqueue(context.celery, service.settings, job["id"], "cpu")
    deadline = time.monotonic() + 30
    while worker.log().count(f"job {job['id']}: not claimable") == before and time.monotonic() < deadline:
        time.sleep(0.2)
    assert worker.log().count(f"job {job['id']}: not claimable") == before + 1
    after = service.job(job["id"])
    assert after["status"] == "succeeded" and after["attempts"] == 1
    assert len(service.metrics(job["id"])["rows"]) == 2


def test_early_stopped_job_succeeds_and_says_why(service: Service) -> None:
    done = service.wait(service.submit(small_spec(epochs=400, patience=3))["id"])
    assert done["status"] == "succeeded", done
    stopped = done["progress"]["epoch"]
    assert stopped < 400 and done["progress"]["total"] == 400
    assert f"after epoch {stopped} of 400" in done["stop_reason"] and "training.patience" in done["stop_reason"]
    listing = service.client.get(f"/v1/jobs/{done['id']}/checkpoints").json()
    assert [entry["final"]["epoch"] for entry in listing["students"]] == [stopped, stopped]
    assert service.job(service.submit(small_spec(epochs=2))["id"])["stop_reason"] is None
