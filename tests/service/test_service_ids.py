"""Ids as people type them: a unique start of a job's or a study's id (6 characters or more, as git and
docker take them) wherever the API takes an id; an ambiguous one is a 422 naming the candidates.
Also: a study without a name takes its spec's, and misspelt fields are answered with the nearest one."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from svc_helpers import Service, bearer, small_spec

from service.core import jobcore


@pytest.fixture
def ids(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """The ids the next jobs and studies get, in order (then random ones again)."""
    planned: list[str] = []
    fallback = jobcore.new_id

    def new_id() -> str:
        return planned.pop(0) if planned else fallback()

    monkeypatch.setattr(jobcore, "new_id", new_id)
    yield planned


def test_a_unique_start_of_an_id_names_the_job(api: Service, ids: list[str]) -> None:
    first, second = "abc123" + "0" * 26, "abc123" + "f" * 26
    ids += [first, second]
    assert api.submit(small_spec())["id"] == first and api.submit(small_spec())["id"] == second

    # unique starts, from 7 characters: every route that takes an id answers for the whole one
    r = api.client.get(f"/v1/jobs/{first[:7]}")
    assert r.status_code == 200 and r.json()["id"] == first
    assert api.client.get(f"/v1/jobs/{second[:9]}/metrics").json()["job_id"] == second
    assert api.client.get(f"/v1/jobs/{second[:9]}/checkpoints").status_code == 200
    assert api.client.get(f"/v1/jobs/{second[:9]}/logs").status_code == 200

    # a start that both ids have: refused, naming them
    r = api.client.get("/v1/jobs/abc123")
    assert r.status_code == 422, r.text
    body = r.json()
    assert body["errors"][0]["loc"] == ["path", "job_id"]
    assert first in body["detail"] and second in body["detail"] and "give more of the id" in body["detail"]

    # under 6 characters an id is taken whole: not found
    r = api.client.get("/v1/jobs/abc12")
    assert r.status_code == 404 and "no job with id 'abc12'" in r.json()["detail"]

    # acting on a job by its start: the cancelled job is the one meant, and only it
    r = api.client.post(f"/v1/jobs/{first[:8]}/cancel")
    assert r.status_code == 200 and r.json()["id"] == first and r.json()["status"] == "cancelled"
    assert api.job(second)["status"] == "queued"
    assert api.client.delete(f"/v1/jobs/{first[:8]}").status_code == 204
    assert api.client.get(f"/v1/jobs/{first}").status_code == 404
    assert api.client.get("/v1/jobs/abc123").json()["id"] == second  # unique again

    # another tenant's ids never match, not even to be called ambiguous
    other = bearer(api.authorize_other("other-tenant"))
    r = api.client.get("/v1/jobs/abc123", headers=other)
    assert r.status_code == 404
    api.client.post(f"/v1/jobs/{second}/cancel")


def test_studies_by_a_start_of_their_id_and_named_after_their_spec(api: Service, ids: list[str]) -> None:
    study_id = "5d5d5d" + "1" * 26
    ids.append(study_id)
    spec = {**small_spec(), "name": "named-in-the-spec"}
    r = api.client.post("/v1/studies", json={"spec": spec, "seeds": 1})
    assert r.status_code == 201, r.text
    assert r.json()["id"] == study_id and r.json()["name"] == "named-in-the-spec"
    r = api.client.get(f"/v1/studies/{study_id[:8]}")
    assert r.status_code == 200 and r.json()["id"] == study_id and r.json()["name"] == "named-in-the-spec"
    named = api.client.post("/v1/studies", json={"spec": spec, "seeds": 1, "name": "mine"}).json()
    assert named["name"] == "mine"  # a name given wins
    for sid in (study_id, named["id"]):
        assert api.client.post(f"/v1/studies/{sid[:10]}/cancel").status_code == 200
        assert api.client.delete(f"/v1/studies/{sid[:10]}").status_code == 204


def test_a_studys_misspelt_field_or_path_is_answered_with_the_nearest_one(api: Service) -> None:
    spec = small_spec()
    spec["students"][0]["hiden_size"] = 8
    r = api.client.post("/v1/studies", json={"spec": spec, "seeds": 1})
    assert r.status_code == 422 and "did you mean 'hidden_size'?" in r.json()["detail"], r.text
    r = api.client.post("/v1/studies", json={"spec": small_spec(), "seeds": 1, "axes": {"distillation.alpah": [1]}})
    assert r.status_code == 422 and "no field 'alpah'; did you mean 'alpha'?" in r.json()["detail"], r.text
    r = api.client.post("/v1/studies", json={"spec": small_spec(), "sedes": 1})  # the study's own fields
    assert r.status_code == 422 and "unknown field 'sedes'; did you mean 'seeds'?" in r.json()["detail"], r.text
    bad = {**small_spec(), "dataset": {"name": "synthetc"}}
    r = api.client.post("/v1/jobs", json=bad)
    assert r.status_code == 422 and "Value error" not in r.text and "did you mean 'synthetic'?" in r.text
