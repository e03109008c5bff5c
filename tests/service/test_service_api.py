"""The API's contract without a worker: validation, 404/409/413/422 answers, pagination, uploads."""

from __future__ import annotations

import io
import time

import numpy as np
import pytest
from sqlalchemy import text
from svc_helpers import Service, npz_bytes, small_spec

from service.core.settings import Settings


def detail_text(r) -> str:
    body = r.json()
    assert set(body) == {"detail", "errors"} and isinstance(body["detail"], str), body  # the one error shape
    return body["detail"]


# --- 404 everywhere ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "method,path",
    [
        ("GET", "/v1/jobs/nope"),
        ("POST", "/v1/jobs/nope/cancel"),
        ("DELETE", "/v1/jobs/nope"),
        ("GET", "/v1/jobs/nope/metrics"),
        ("GET", "/v1/jobs/nope/checkpoints"),
        ("GET", "/v1/jobs/nope/checkpoints/0/best"),
        ("GET", "/v1/datasets/nope"),
        ("DELETE", "/v1/datasets/nope"),
    ],
)
def test_unknown_ids_are_404_with_a_message(api: Service, method: str, path: str) -> None:
    r = api.client.request(method, path)
    assert r.status_code == 404
    assert "nope" in r.json()["detail"]


def test_missing_checkpoint_of_a_known_job_is_404(api: Service) -> None:
    job = api.submit(small_spec())
    r = api.client.get(f"/v1/jobs/{job['id']}/checkpoints/0/best")
    assert r.status_code == 404 and "checkpoint" in r.json()["detail"]
    assert api.client.get(f"/v1/jobs/{job['id']}/checkpoints/0/middle").status_code == 422


# --- job specs ------------------------------------------------------------------------------------


def _with(section: str, **values: object) -> dict:
    spec = small_spec()
    spec[section] = {**spec.get(section, {}), **values}
    return spec


@pytest.mark.parametrize(
    "spec,loc,words",
    [
        ({**small_spec(), "trainig": {}}, ["body", "trainig"], "unknown field 'trainig'; did you mean 'training'?"),
        (_with("training", epocs=3), ["body", "training", "epocs"], "unknown field 'epocs'; did you mean 'epochs'?"),
        (_with("training", zzz=3), ["body", "training", "zzz"], "unknown field 'zzz'; the fields here are epochs,"),
        (
            {**small_spec(), "students": [{"arch": "gcn", "count": 2, "hidden_size": -4}]},
            ["body", "students", 0, "hidden_size"],
            "greater than",
        ),
        ({**small_spec(), "students": [{"arch": "gcn", "count": 1}]}, ["body"], "at least 2 students"),
        (_with("training", device="tpu"), ["body", "training", "device"], "cpu"),
        (_with("dataset", name="npz", path="/etc/passwd"), ["body", "dataset", "name"], "POST /v1/datasets"),
        (_with("dataset", name="upload", upload_id="0" * 32), ["body", "dataset", "upload_id"], "no uploaded"),
        (_with("dataset", name="imagenet"), ["body", "dataset"], "unknown dataset"),
        # numpy refuses a negative seed: refused here, not in the worker
        (_with("dataset", split={"seed": -1}), ["body", "dataset", "split", "seed"], "greater than"),
        (_with("dataset", split={"seed": 2**31}), ["body", "dataset", "split", "seed"], "less than"),
        (_with("dataset", name="citeseeer"), ["body", "dataset"], "'citeseeer'; did you mean 'citeseer'?"),
    ],
)
def test_bad_specs_are_422_naming_the_field(api: Service, spec: dict, loc: list, words: str) -> None:
    before = len(api.client.get("/v1/jobs", params={"limit": 1000}).json()["jobs"])
    r = api.client.post("/v1/jobs", json=spec)
    assert r.status_code == 422, r.text
    errors = r.json()["errors"]
    assert any(e["loc"][: len(loc)] == loc for e in errors), errors
    assert words in detail_text(r)
    assert len(api.client.get("/v1/jobs", params={"limit": 1000}).json()["jobs"]) == before  # nothing stored


def test_malformed_json_is_422(api: Service) -> None:
    r = api.client.post("/v1/jobs", content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 422 and "JSON" in detail_text(r)


def test_submitted_job_is_queued_with_its_queue(api: Service) -> None:
    job = api.submit(small_spec(epochs=3))
    assert job["status"] == "queued" and job["queue"] == "cpu"
    assert job["progress"] == {"epoch": 0, "total": 3}
    assert job["attempts"] == 0 and job["started_at"] is None and job["error"] is None
    assert [s["arch"] for s in job["students"]] == ["gcn", "gcn"]
    gpu = api.submit(small_spec(device="cuda"))
    assert gpu["queue"] == "gpu"
    assert api.client.get(f"/v1/jobs/{job['id']}").json()["spec"]["training"]["epochs"] == 3


def test_idempotency_key_returns_the_first_job(api: Service) -> None:
    headers = {"Idempotency-Key": f"key-{time.time()}"}
    first = api.client.post("/v1/jobs", json=small_spec(), headers=headers)
    again = api.client.post("/v1/jobs", json=small_spec(), headers=headers)
    assert first.status_code == 201 and again.status_code == 200
    assert again.json()["id"] == first.json()["id"]
    other = api.client.post("/v1/jobs", json=small_spec(epochs=9), headers=headers)
    assert other.status_code == 409 and "Idempotency-Key" in other.json()["detail"]


# --- listing ----------------------------------------------------------------------------------------


def test_jobs_list_newest_first_with_keyset_pages(api: Service) -> None:
    ids = [api.submit(small_spec(epochs=1 + i))["id"] for i in range(5)]
    seen, cursor = [], None
    while True:
        params = {"limit": 2, **({"cursor": cursor} if cursor else {})}
        page = api.client.get("/v1/jobs", params=params).json()
        assert len(page["jobs"]) <= 2
        seen += [j["id"] for j in page["jobs"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert len(seen) == len(set(seen))
    assert [i for i in seen if i in ids] == ids[::-1]  # newest first
    queued = api.client.get("/v1/jobs", params={"status": "queued", "limit": 1000}).json()["jobs"]
    assert {j["status"] for j in queued} == {"queued"} and set(ids) <= {j["id"] for j in queued}
    assert api.client.get("/v1/jobs", params={"status": "done"}).status_code == 422
    r = api.client.get("/v1/jobs", params={"cursor": "garbage!"})
    assert r.status_code == 422 and "cursor" in detail_text(r)
    assert api.client.get("/v1/jobs", params={"limit": 0}).status_code == 422


# --- cancel and delete --------------------------------------------------------------------------------


def test_cancel_queued_job_at_once_and_conflicts(api: Service) -> None:
    job = api.submit(small_spec())
    r = api.client.delete(f"/v1/jobs/{job['id']}")
    assert r.status_code == 409 and "cancel" in r.json()["detail"].lower()
    r = api.client.post(f"/v1/jobs/{job['id']}/cancel")
    assert r.status_code == 200
    assert r.json()["status"] == "cancelled" and r.json()["finished_at"] is not None
    assert r.json()["started_at"] is None
    r = api.client.post(f"/v1/jobs/{job['id']}/cancel")
    assert r.status_code == 409 and "already cancelled" in r.json()["detail"]
    assert api.client.delete(f"/v1/jobs/{job['id']}").status_code == 204
    assert api.client.get(f"/v1/jobs/{job['id']}").status_code == 404


def test_cancel_of_running_job_whose_worker_vanished_settles_it(api: Service) -> None:
    job = api.submit(small_spec())
    with api.engine.begin() as conn:  # as if a worker claimed it and then died long ago
        conn.execute(
            text(
                "UPDATE jobs SET status='running', attempts=1, claim_token='x', "
                "heartbeat_at='2000-01-01 00:00:00', started_at='2000-01-01 00:00:00' WHERE id=:id"
            ),
            {"id": job["id"]},
        )
    r = api.client.post(f"/v1/jobs/{job['id']}/cancel")
    assert r.status_code == 200 and r.json()["status"] == "cancelled"


# --- uploads --------------------------------------------------------------------------------------


def test_upload_roundtrip_and_use_in_a_spec(api: Service) -> None:
    data = npz_bytes()
    r = api.upload(data, "ring.npz")
    assert r.status_code == 201, r.text
    up = r.json()
    assert up["size"] == len(data) and up["filename"] == "ring.npz"
    assert up["summary"]["num_nodes"] == 60 and up["summary"]["num_classes"] == 3
    assert up["dataset_spec"] == {"name": "upload", "upload_id": up["id"]}
    assert api.client.get(f"/v1/datasets/{up['id']}").json()["sha256"] == up["sha256"]
    listing = api.client.get("/v1/datasets").json()
    assert up["id"] in [u["id"] for u in listing["uploads"]]
    names = {d["name"] for d in listing["builtin"]}
    assert {"synthetic", "cora", "upload"} <= names and "npz" not in names

    spec = small_spec()
    spec["dataset"] = up["dataset_spec"]
    job = api.submit(spec)
    r = api.client.delete(f"/v1/datasets/{up['id']}")
    assert r.status_code == 409 and job["id"] in r.json()["detail"]
    api.client.post(f"/v1/jobs/{job['id']}/cancel")
    assert api.client.delete(f"/v1/datasets/{up['id']}").status_code == 204
    assert api.client.get(f"/v1/datasets/{up['id']}").status_code == 404


def test_pickled_npz_is_refused_unopened(api: Service) -> None:
    buf = io.BytesIO()
    np.savez(buf, adj_data=np.array([{"x": 1}], dtype=object))
    r = api.upload(buf.getvalue())
    assert r.status_code == 422
    assert r.json()["errors"][0]["loc"] == ["body", "file"]
    assert "object" in detail_text(r).lower()


@pytest.mark.parametrize(
    "data,words",
    [(b"definitely not a zip", "npz"), (npz_bytes(labels=np.zeros(60, dtype=np.int64)), "class")],
)
def test_invalid_npz_is_422_with_the_reason(api: Service, data: bytes, words: str) -> None:
    r = api.upload(data)
    assert r.status_code == 422 and words in detail_text(r)


def test_too_large_upload_is_413(api: Service) -> None:
    assert api.settings.max_upload_bytes == 50_000
    r = api.upload(b"\0" * 200_000)
    assert r.status_code == 413 and "limit" in r.json()["detail"]

    def chunks():  # no Content-Length: the cap must hold while streaming
        boundary = b"--xyz\r\n"
        yield boundary + b'Content-Disposition: form-data; name="file"; filename="a.npz"\r\n\r\n'
        for _ in range(40):
            yield b"\0" * 10_000
        yield b"\r\n--xyz--\r\n"

    r = api.client.post("/v1/datasets", content=chunks(), headers={"content-type": "multipart/form-data; boundary=xyz"})
    assert r.status_code == 413


def test_upload_without_file_field_is_422(api: Service) -> None:
    r = api.client.post("/v1/datasets", files={"other": ("a.npz", b"x")})
    assert r.status_code == 422 and "file" in detail_text(r)
    r = api.client.post("/v1/datasets", json={"file": "x"})
    assert r.status_code == 422


# --- health and docs ----------------------------------------------------------------------------------


def test_health_and_readiness(api: Service) -> None:
    assert api.client.get("/healthz").json()["status"] == "ok"
    r = api.client.get("/readyz")
    assert r.status_code == 200 and r.json()["checks"] == {"database": "ok", "broker": "ok"}


def test_readiness_names_the_unreachable_broker_and_logs_its_address(api: Service, caplog) -> None:
    from fastapi.testclient import TestClient

    from service.api.app import create_app

    broken = Settings(database_url=api.settings.database_url, broker_url="redis://127.0.0.1:1/0")
    with caplog.at_level("WARNING", logger="alignahead.service"), TestClient(create_app(broken)) as client:
        r = client.get("/readyz")
    assert r.status_code == 503
    assert r.json() == {"status": "unavailable", "checks": {"database": "ok", "broker": "unreachable"}}
    assert "127.0.0.1" not in r.text  # the answer needs no key: the address and the error go to the log
    assert "broker is unreachable" in caplog.text and "127.0.0.1:1" in caplog.text


def test_readiness_names_the_unreachable_database(api: Service, caplog) -> None:
    from fastapi.testclient import TestClient

    from service.api.app import create_app

    gone = "postgresql+psycopg://someone:hunter2@127.0.0.1:1/jobs"  # nothing listens on port 1
    broken = api.settings.model_copy(update={"database_url": gone})
    with caplog.at_level("WARNING", logger="alignahead.service"), TestClient(create_app(broken)) as client:
        r = client.get("/readyz")
    assert r.status_code == 503 and r.json()["checks"] == {"database": "unreachable", "broker": "ok"}, r.text
    assert "127.0.0.1" not in r.text and "hunter2" not in r.text
    assert "database is unreachable" in caplog.text


def test_openapi_documents_every_route(api: Service) -> None:
    paths = api.client.get("/openapi.json").json()["paths"]
    assert {"/v1/jobs", "/v1/jobs/{job_id}/metrics", "/v1/jobs/{job_id}/checkpoints/{student}/{kind}",
            "/v1/datasets", "/healthz", "/readyz"} <= set(paths)  # fmt: skip
    assert "multipart/form-data" in paths["/v1/datasets"]["post"]["requestBody"]["content"]
