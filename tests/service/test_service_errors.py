"""Hostile input gets a 4xx in the one error shape, never a 500, on SQLite and on PostgreSQL."""

from __future__ import annotations

import base64
import json

import pytest
from svc_helpers import Service, npz_bytes, small_spec

HUGE = str(2**70)


def _shape(r) -> dict:  # type: ignore[no-untyped-def]
    body = r.json()
    assert set(body) == {"detail", "errors"} and isinstance(body["detail"], str) and body["detail"], body
    return body


@pytest.mark.parametrize(
    "path",
    [
        "/v1/jobs/{id}/checkpoints/" + HUGE + "/best",
        "/v1/jobs/{id}/checkpoints/-1/best",
        "/v1/jobs/{id}/metrics?student=" + HUGE,
        "/v1/jobs/{id}/metrics?since=" + HUGE,
        "/v1/jobs/{id}/metrics?since=-1",
        "/v1/jobs/{id}/metrics?limit=" + HUGE,
        "/v1/jobs?limit=" + HUGE,
        "/v1/datasets?limit=" + HUGE,
        "/v1/jobs/" + "x" * 65,
        # each integer is bounded by the column it is compared with: log seqs are 32-bit, metric seqs 64-bit
        "/v1/jobs/{id}/logs?since=2147483648",
        "/v1/jobs/{id}/logs?since=" + str(2**63),
        "/v1/jobs/{id}/events?since=" + str(2**63),
    ],
)
def test_out_of_range_integers_are_422(service: Service, path: str) -> None:
    job = service.submit(small_spec(epochs=1))
    r = service.client.get(path.replace("{id}", job["id"]))
    assert r.status_code == 422, r.text
    body = _shape(r)
    assert body["errors"] and body["errors"][0]["loc"][0] in ("path", "query")


@pytest.mark.parametrize(
    "body,words",
    [
        (b"[" * 100_000 + b"]" * 100_000, "nests"),
        (b'{"training": {"epochs": ' + b"9" * 5000 + b"}}", "JSON"),
        (b'{"training": {"seed": ' + HUGE.encode() + b"}}", "seed"),
        (b"{not json", "JSON"),
        (b'{"training": {"epochs": NaN}}', "epochs"),
    ],
)
def test_hostile_json_bodies_are_4xx(service: Service, body: bytes, words: str) -> None:
    r = service.client.post("/v1/jobs", content=body, headers={"content-type": "application/json"})
    assert 400 <= r.status_code < 500 and r.status_code != 400, (r.status_code, r.text[:300])
    assert words in _shape(r)["detail"]


def test_integers_at_their_columns_widest_are_answered(service: Service) -> None:
    job = service.submit(small_spec(epochs=1))
    r = service.client.get(f"/v1/jobs/{job['id']}/logs", params={"since": 2**31 - 1})
    assert r.status_code == 200 and r.json()["lines"] == [], r.text
    r = service.client.get(f"/v1/jobs/{job['id']}/metrics", params={"since": 2**63 - 1})
    assert r.status_code == 200 and r.json()["rows"] == [], r.text


def test_unknown_routes_and_methods_use_the_shape(service: Service) -> None:
    r = service.client.get("/v2/jobs")
    assert r.status_code == 404 and "/v1" in _shape(r)["detail"]
    r = service.client.put("/v1/jobs")
    assert r.status_code == 405 and "PUT" in _shape(r)["detail"]
    # Allow names every method of the path, across the routes that share it, and each of them is routed
    job = "/v1/jobs/" + "0" * 32
    for method, path, allow in [("PUT", "/v1/jobs", "GET, POST"), ("PUT", job, "GET, DELETE"),
                                ("GET", job + "/cancel", "POST"), ("PATCH", "/v1/studies", "GET, POST")]:  # fmt: skip
        r = service.client.request(method, path)
        assert r.status_code == 405 and r.headers["allow"] == allow, (method, path, r.headers)
        assert allow in _shape(r)["detail"]
        for listed in allow.split(", "):
            assert service.client.request(listed, path, json={"no": 1}).status_code != 405, (listed, path)
    r = service.client.post("/v1/datasets", content=b"--x\r\nbroken", headers={"content-type": "multipart/form-data"})
    assert r.status_code == 422, r.text
    _shape(r)


# --- text bound for the database: no NUL, whatever the route ------------------------------------------

NUL_JOB = "ab\x00cd"


def _multipart_with_filename(filename: bytes) -> tuple[bytes, str]:
    """A multipart body by hand: httpx would percent-encode a NUL in a filename."""
    boundary = "nulboundary"
    body = (
        f"--{boundary}\r\n".encode()
        + b'Content-Disposition: form-data; name="file"; filename="' + filename + b'"\r\n'
        + b"Content-Type: application/octet-stream\r\n\r\n"
        + npz_bytes()
        + f"\r\n--{boundary}--\r\n".encode()
    )  # fmt: skip
    return body, f"multipart/form-data; boundary={boundary}"


@pytest.mark.parametrize(
    "method,path,loc",
    [
        ("GET", "/v1/jobs/ab%00cd", ["path"]),
        ("GET", "/v1/jobs/ab%00cd/metrics?since=0", ["path"]),  # the polling fast path's request
        ("GET", "/v1/jobs/ab%00cd/logs", ["path"]),
        ("DELETE", "/v1/jobs/ab%00cd", ["path"]),
        ("POST", "/v1/jobs/ab%00cd/cancel", ["path"]),
        ("GET", "/v1/datasets/ab%00cd", ["path"]),
        ("GET", "/v1/studies/ab%00cd", ["path"]),
        ("GET", "/v1/jobs?name=a%00b", ["query", "name"]),
        ("GET", "/v1/jobs?tag=ok&tag=a%00", ["query", "tag"]),
        ("GET", "/v1/jobs?cursor=%00", ["query", "cursor"]),
    ],
)
def test_nul_in_the_url_is_422_naming_where(service: Service, method: str, path: str, loc: list[str]) -> None:
    r = service.client.request(method, path)
    assert r.status_code == 422, r.text
    body = _shape(r)
    assert body["errors"][0]["loc"] == loc and body["errors"][0]["type"] == "string_nul", body
    assert "NUL" in body["detail"]


@pytest.mark.parametrize(
    "path,body,loc",
    [
        ("/v1/jobs", {**small_spec(), "name": NUL_JOB}, ["body", "name"]),
        ("/v1/jobs", {**small_spec(), "tags": ["ok", NUL_JOB]}, ["body", "tags", 1]),
        ("/v1/jobs", {**small_spec(), "dataset": {"name": "upload", "upload_id": NUL_JOB}},
         ["body", "dataset", "upload_id"]),
        ("/v1/studies", {"name": NUL_JOB, "spec": small_spec(), "seeds": 1}, ["body", "name"]),
        ("/v1/studies", {"spec": {**small_spec(), "name": NUL_JOB}, "seeds": 1}, ["body", "spec", "name"]),
        ("/v1/studies", {"spec": small_spec(), "seeds": 1, "axes": {"training.lr": [0.1], NUL_JOB: [1]}},
         ["body", "axes"]),
    ],
)  # fmt: skip
def test_nul_in_a_json_body_is_422_naming_the_field(service: Service, path: str, body: dict, loc: list) -> None:
    jobs_before = len(service.client.get("/v1/jobs", params={"limit": 1000}).json()["jobs"])
    r = service.client.post(path, json=body)
    assert r.status_code == 422, r.text
    assert _shape(r)["errors"][0]["loc"] == loc, r.text
    assert len(service.client.get("/v1/jobs", params={"limit": 1000}).json()["jobs"]) == jobs_before


def test_an_escaped_backslash_before_u0000_is_not_a_nul(service: Service) -> None:
    job = service.submit({**small_spec(epochs=1), "name": "C:\\u0000"})  # the 7 characters C:\u0000
    assert job["name"] == "C:\\u0000"
    found = service.client.get("/v1/jobs", params={"name": "C:\\u0000"}).json()["jobs"]
    assert [j["id"] for j in found] == [job["id"]]
    service.client.post(f"/v1/jobs/{job['id']}/cancel")


def test_nul_in_a_header_or_a_cursor_or_an_upload_name_is_422(service: Service) -> None:
    r = service.client.post("/v1/jobs", json=small_spec(epochs=1), headers={"Idempotency-Key": "k\x00"})
    assert r.status_code == 422 and _shape(r)["errors"][0]["loc"] == ["header", "idempotency-key"], r.text
    forged = base64.urlsafe_b64encode(json.dumps(["2026-01-01T00:00:00+00:00", "a\x00"]).encode()).decode()
    r = service.client.get("/v1/jobs", params={"cursor": forged})
    assert r.status_code == 422 and _shape(r)["errors"][0]["loc"] == ["query", "cursor"], r.text
    content, content_type = _multipart_with_filename(b"graph\x00.npz")
    r = service.client.post("/v1/datasets", content=content, headers={"content-type": content_type})
    assert r.status_code == 422 and _shape(r)["errors"][0]["loc"] == ["body", "file", "filename"], r.text
    # a name longer than the column is cut, not a 500
    content, content_type = _multipart_with_filename(b"g" * 400 + b".npz")
    r = service.client.post("/v1/datasets", content=content, headers={"content-type": content_type})
    assert r.status_code == 201 and r.json()["filename"] == "g" * 255, r.text
    service.client.delete(f"/v1/datasets/{r.json()['id']}")


def test_nan_where_no_model_looks_is_422_naming_the_field(service: Service) -> None:
    """A study's base spec is stored as sent; an axis overrides `training.lr`, so no model reads the NaN
    there, and PostgreSQL would refuse it in the JSON column."""
    spec = small_spec(epochs=1)
    spec["training"]["lr"] = float("nan")
    studies_before = len(service.client.get("/v1/studies").json()["studies"])
    body = json.dumps({"spec": spec, "seeds": 1, "axes": {"training.lr": [0.1]}})
    r = service.client.post("/v1/studies", content=body, headers={"content-type": "application/json"})
    assert r.status_code == 422, r.text
    assert _shape(r)["errors"][0]["loc"] == ["body", "spec", "training", "lr"], r.text
    assert len(service.client.get("/v1/studies").json()["studies"]) == studies_before
    # a string that spells NaN is a string
    job = service.submit({**small_spec(epochs=1), "name": "NaN Infinity"})
    assert job["name"] == "NaN Infinity"
