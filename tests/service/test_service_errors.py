"""Hostile input gets a 4xx in the one error shape, never a 500, on SQLite and on PostgreSQL."""

from __future__ import annotations

import pytest
from svc_helpers import Service, small_spec

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


def test_unknown_routes_and_methods_use_the_shape(service: Service) -> None:
    r = service.client.get("/v2/jobs")
    assert r.status_code == 404 and "/v1" in _shape(r)["detail"]
    r = service.client.put("/v1/jobs")
    assert r.status_code == 405 and "PUT" in _shape(r)["detail"]
    r = service.client.post("/v1/datasets", content=b"--x\r\nbroken", headers={"content-type": "multipart/form-data"})
    assert r.status_code == 422, r.text
    _shape(r)
