"""End to end on each backend: a real worker trains real jobs submitted over HTTP."""

from __future__ import annotations

import csv
import hashlib
import io
import time

import pytest
import torch
from fastapi.testclient import TestClient
from sqlalchemy import text
from svc_helpers import Service, bearer, long_spec, npz_bytes, small_spec

import alignahead
from alignahead.datasets import load_dataset
from alignahead.spec import JobSpec
from alignahead.trainer import score
from service.core.broker import enqueue


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


def test_identical_jobs_publish_identical_checkpoints(service: Service) -> None:
    """Two runs of one spec train the same weights, and their files are the same bytes: users compare
    runs by the published sha256."""
    jobs = [service.submit(small_spec(epochs=3)) for _ in range(2)]
    published = []
    for job in jobs:
        assert service.wait(job["id"])["status"] == "succeeded"
        listing = service.client.get(f"/v1/jobs/{job['id']}/checkpoints").json()["students"]
        published.append([(s["student"], kind, s[kind]["sha256"]) for s in listing for kind in ("best", "final")])
    assert len(published[0]) == 4 and published[0] == published[1]


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


def test_metrics_csv_puts_several_jobs_rows_side_by_side(service: Service) -> None:
    """GET /v1/metrics.csv?job=A&job=B: every row of each job, in the order asked, exactly the values of
    GET /v1/jobs/{id}/metrics; a job not found (unknown, another tenant's) is a 404 naming it, bad input
    a 422, both in the one error shape."""
    c = service.client
    a = service.submit(small_spec(epochs=3) | {"name": "csv-a"})
    b = service.submit(small_spec(epochs=2))  # unnamed
    for job in (a, b):
        assert service.wait(job["id"])["status"] == "succeeded"

    r = c.get("/v1/metrics.csv", params={"job": [b["id"], a["id"], b["id"]]})  # b first; a repeat counts once
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/csv")
    assert r.headers["content-disposition"] == f'attachment; filename="metrics-{b["id"][:8]}-{a["id"][:8]}.csv"'
    lines = list(csv.DictReader(io.StringIO(r.text)))
    expected = [(b, row) for row in service.metrics(b["id"])["rows"]] + [
        (a, row) for row in service.metrics(a["id"])["rows"]
    ]
    assert len(lines) == len(expected) == 2 * (2 + 3)
    for line, (job, row) in zip(lines, expected, strict=True):
        assert line["job_id"] == job["id"] and line["job_name"] == (job["name"] or "")
        assert line["arch"] == "gcn"  # small_spec: two GCN students
        assert int(line["student"]) == row["student"] and int(line["epoch"]) == row["epoch"]
        assert int(line["seq"]) == row["seq"] and line["created_at"] == row["created_at"]
        for key in ("loss", "task_loss", "distill_loss", "val_score", "test_score", "seconds"):
            assert float(line[key]) == row[key], key  # in full: the same double as the JSON
        assert line["train_score"] == ("" if row["train_score"] is None else repr(row["train_score"]))

    def refused(params: dict, code: int, words: str, other: TestClient | None = None) -> dict:
        r = (other or c).get("/v1/metrics.csv", params=params)
        assert r.status_code == code, r.text
        body = r.json()
        assert set(body) == {"detail", "errors"} and words in body["detail"], body
        return body

    ghost = "0" * 32
    body = refused({"job": [a["id"], ghost]}, 404, f"no job with id {ghost!r}")
    assert body["errors"] == []
    other = TestClient(c.app, headers=bearer(service.authorize_other("csv-intruder")))
    refused({"job": [a["id"]]}, 404, f"no job with id {a['id']!r}", other)  # another tenant's: not found
    assert refused({}, 422, "job")["errors"][0]["loc"] == ["query", "job"]
    too_many = refused({"job": [f"{i:032x}" for i in range(21)]}, 422, "20")
    assert too_many["errors"][0]["loc"] == ["query", "job"]
    for bad in ("x" * 65, "", "a b"):  # too long, empty, characters no id has
        assert refused({"job": [a["id"], bad]}, 422, "pattern")["errors"][0]["loc"] == ["query", "job", 1], bad
    # a NUL is refused before any route, as in every query (service.api.guards)
    assert refused({"job": [a["id"], "nul\x00"]}, 422, "NUL")["errors"][0]["loc"] == ["query", "job"]
    unknown = refused({"job": [a["id"]], "jobs": "x"}, 422, "unknown query parameter 'jobs'")
    assert unknown["errors"][0]["loc"] == ["query", "jobs"]
