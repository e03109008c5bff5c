"""Studies through the real API: validation of every combination up front, one ordinary job per combination
and seed run by the real worker, and the results table checked against the jobs' own results."""

from __future__ import annotations

import csv
import io
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from fastapi.testclient import TestClient
from scipy import stats
from svc_helpers import Service, bearer, long_spec, make_key, small_spec

from service.api.app import create_app

SEEDS = 3
# Chosen (and checked with the library) so that distillation reliably hurts: alpha at its maximum
# drowns the task loss and tau 'auto' keeps the distillation loss alive; 'none' learns the easy
# synthetic classes well in 15 epochs. Every seed, both students: test_at_best drops by 0.3 or more.
SIGN_SPEC: dict[str, Any] = {
    "dataset": {"name": "synthetic", "synthetic": {"num_nodes": 200, "num_features": 16, "feature_signal": 2.0}},
    "students": [{"arch": "gcn", "count": 2, "hidden_layers": 2, "hidden_size": 16}],
    "distillation": {"alpha": 1e6, "tau": "auto"},
    "training": {"epochs": 15, "device": "cpu"},
}
STRATEGY = "distillation.strategy"


def wait_study(service: Service, study_id: str, timeout: float = 300.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        r = service.client.get(f"/v1/studies/{study_id}")
        assert r.status_code == 200, r.text
        study = r.json()
        if study["done"]:
            return study
        if time.monotonic() > deadline:
            logs = "\n".join(w.log()[-3000:] for w in service.workers)
            raise AssertionError(f"study {study_id} not done after {timeout} s: {study['counts']}\n{logs}")
        time.sleep(0.2)


def study_jobs(service: Service, study_id: str) -> list[dict[str, Any]]:
    r = service.client.get("/v1/jobs", params={"study": study_id, "limit": 1000})
    assert r.status_code == 200, r.text
    return [service.job(j["id"]) for j in r.json()["jobs"]]


@pytest.mark.parametrize("service", ["embedded"], indirect=True)
def test_study_runs_every_combination_and_its_table_matches_the_jobs(service: Service) -> None:
    body = {"name": "sign", "spec": SIGN_SPEC, "seeds": SEEDS, "axes": {STRATEGY: ["none", "alignahead"]}}
    r = service.client.post("/v1/studies", json=body)
    assert r.status_code == 201, r.text
    created = r.json()
    assert r.headers["Location"] == f"/v1/studies/{created['id']}"
    assert (
        created["jobs"] == 6 and created["seeds"] == [0, 1, 2] and created["axes"] == {STRATEGY: ["none", "alignahead"]}
    )
    assert created["test"] == "paired t-test" and created["confidence"] == 0.95

    study = wait_study(service, created["id"])
    assert study["counts"]["succeeded"] == 6, study["counts"]
    jobs = study_jobs(service, study["id"])
    assert sorted(j["id"] for j in jobs) == sorted(study["job_ids"])
    assert all(j["study_id"] == study["id"] and j["status"] == "succeeded" for j in jobs)
    # one job per (strategy, seed), each an ordinary job with the base spec and its values
    by_cell: dict[tuple[str, int], dict[str, Any]] = {}
    for j in jobs:
        spec = j["spec"]
        assert spec["distillation"]["alpha"] == 1e6 and spec["training"]["epochs"] == 15
        by_cell[(spec["distillation"]["strategy"], spec["training"]["seed"])] = j
    assert sorted(by_cell) == [(s, seed) for s in ("alignahead", "none") for seed in range(SEEDS)]
    # job_ids in expansion order: cell by cell in the axes' order, seeds within each
    assert study["job_ids"] == [by_cell[(s, seed)]["id"] for s in ("none", "alignahead") for seed in range(SEEDS)]
    assert by_cell[("none", 1)]["name"] == "sign strategy=none seed=1"

    rows = {(row["cell"][STRATEGY], row["student"]): row for row in study["table"]}
    assert sorted(rows) == [(s, i) for s in ("alignahead", "none") for i in (0, 1)]
    assert [row["cell"][STRATEGY] for row in study["table"]] == ["none", "none", "alignahead", "alignahead"]

    def values(strategy: str, student: int, metric: str) -> np.ndarray:
        return np.array([by_cell[(strategy, seed)]["students"][student][metric] for seed in range(SEEDS)])

    for (strategy, student), row in rows.items():
        assert row["jobs"] == SEEDS and row["succeeded"] == SEEDS
        for metric in ("test_at_best", "best_val"):
            mine = values(strategy, student, metric)
            got = row[metric]
            assert got["n"] == SEEDS
            assert got["mean"] == pytest.approx(mine.mean(), rel=1e-12)
            assert got["std"] == pytest.approx(mine.std(ddof=1), rel=1e-12)
            if strategy == "none":
                assert got["vs_baseline"] is None
                continue
            base = values("none", student, metric)
            diff = got["vs_baseline"]
            d = mine - base  # paired by seed
            assert diff["n"] == SEEDS
            assert diff["mean_diff"] == pytest.approx(d.mean(), rel=1e-12)
            low, high = stats.t.interval(0.95, SEEDS - 1, loc=d.mean(), scale=d.std(ddof=1) / np.sqrt(SEEDS))
            assert (diff["ci_low"], diff["ci_high"]) == (pytest.approx(low, rel=1e-9), pytest.approx(high, rel=1e-9))
            assert diff["p_value"] == pytest.approx(stats.ttest_rel(mine, base).pvalue, rel=1e-9)
        if strategy == "alignahead":  # built so that distillation at alpha 1e6 hurts, every seed
            assert (values(strategy, student, "test_at_best") < values("none", student, "test_at_best")).all()
            assert row["test_at_best"]["vs_baseline"]["mean_diff"] < -0.1

    # the same table as CSV
    r = service.client.get(f"/v1/studies/{study['id']}/table.csv")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/csv")
    lines = list(csv.DictReader(io.StringIO(r.text)))
    assert [(ln[STRATEGY], int(ln["student"])) for ln in lines] == [(row["cell"][STRATEGY], row["student"])
                                                                      for row in study["table"]]  # fmt: skip
    for ln, row in zip(lines, study["table"], strict=True):
        assert float(ln["test_at_best_mean"]) == row["test_at_best"]["mean"]
        assert float(ln["best_val_std"]) == row["best_val"]["std"]
        vs = row["test_at_best"]["vs_baseline"]
        assert ln["test_at_best_vs_none_p_value"] == ("" if vs is None else repr(vs["p_value"]))

    listing = service.client.get("/v1/studies").json()["studies"]
    mine = [s for s in listing if s["id"] == study["id"]]
    assert mine and mine[0]["counts"]["succeeded"] == 6 and mine[0]["done"]

    r = service.client.delete(f"/v1/studies/{study['id']}")
    assert r.status_code == 204, r.text
    assert service.client.get(f"/v1/studies/{study['id']}").status_code == 404
    assert all(service.client.get(f"/v1/jobs/{j['id']}").status_code == 404 for j in jobs)


@pytest.mark.parametrize("service", ["embedded"], indirect=True)
def test_cancel_cancels_every_job_and_delete_waits_for_it(service: Service) -> None:
    spec = long_spec(epochs=2000)
    body = {"spec": spec, "seeds": [3, 4], "axes": {STRATEGY: ["none", "alignahead"]}}
    r = service.client.post("/v1/studies", json=body)
    assert r.status_code == 201, r.text
    study_id = r.json()["id"]
    r = service.client.delete(f"/v1/studies/{study_id}")
    assert r.status_code == 409 and f"/v1/studies/{study_id}/cancel" in r.json()["detail"]

    r = service.client.post(f"/v1/studies/{study_id}/cancel")
    assert r.status_code == 200, r.text
    study = wait_study(service, study_id, timeout=120)
    assert study["counts"]["cancelled"] == 4, study["counts"]
    assert all(j["status"] == "cancelled" for j in study_jobs(service, study_id))
    assert all(row["succeeded"] == 0 and row["test_at_best"]["n"] == 0 for row in study["table"])
    assert service.client.delete(f"/v1/studies/{study_id}").status_code == 204


# --- refusals: every combination is checked before anything is stored -----------------------------------


@pytest.fixture(scope="module")
def small_quota(api: Service) -> Iterator[TestClient]:
    settings = api.settings.model_copy(update={"max_active_jobs": 5, "max_study_jobs": 12, "max_epochs": 100})
    with TestClient(create_app(settings), headers=bearer(make_key(settings, "studies-quota"))) as client:
        yield client


def _count(client: TestClient, path: str, key: str) -> int:
    return len(client.get(path, params={"limit": 1000}).json()[key])


@pytest.mark.parametrize(
    "axes,seeds,loc,words",
    [
        ({"distillation.strateg": ["none"]}, 2, ["body", "axes", "distillation.strateg"], ["unknown spec path",
                                                                                             "strategy"]),
        ({"students.hidden_size": [8]}, 2, ["body", "axes", "students.hidden_size"], ["students.0.hidden_size"]),
        ({"distillation.alpha": [1, -1]}, 2, ["body", "axes", "distillation.alpha"], ["alpha=-1", "greater than"]),
        ({STRATEGY: ["none", "fancy"]}, 2, ["body", "axes", STRATEGY], ["strategy=fancy"]),
        # valid alone, refused together: two strategies that distil need two students
        ({"students.0.count": [1, 2], STRATEGY: ["none", "one-to-one"]}, 2, ["body", "axes"],
         ["count=1 strategy=one-to-one", "at least 2 students"]),
        ({"training.seed": [1, 2]}, 2, ["body", "axes", "training.seed"], ["seeds"]),
        # the study names its jobs (name, cell, seed): an axis on the name would be overwritten per seed
        ({"name": ["a", "b"]}, 2, ["body", "axes", "name"], ["names its jobs"]),
        ({"distillation.alpha": []}, 2, ["body", "axes", "distillation.alpha"], ["non-empty"]),
        ({"training.epochs": [5, 101]}, 2, ["body", "axes", "training.epochs"],
         ["epochs=101", "ALIGNAHEAD_MAX_EPOCHS"]),
        ({"distillation.alpha": [0.5, 1, 2, 4, 8]}, 3, ["body", "axes"], ["15 jobs", "ALIGNAHEAD_MAX_STUDY_JOBS"]),
        ({}, 13, ["body", "seeds"], ["ALIGNAHEAD_MAX_STUDY_JOBS"]),
        ({}, [1, 1], ["body", "seeds"], ["repeat"]),
        ({"distillation.alpha": [1, 2]}, 3, ["body", "axes"], ["6 jobs", "ALIGNAHEAD_MAX_ACTIVE_JOBS"]),
    ],
)  # fmt: skip
def test_invalid_studies_are_refused_whole_naming_what_fails(
    small_quota: TestClient, axes: dict[str, Any], seeds: Any, loc: list[str], words: list[str]
) -> None:
    studies_before = _count(small_quota, "/v1/studies", "studies")
    jobs_before = _count(small_quota, "/v1/jobs", "jobs")
    r = small_quota.post("/v1/studies", json={"spec": small_spec(), "seeds": seeds, "axes": axes})
    assert r.status_code == 422, r.text
    body = r.json()
    assert body["errors"][0]["loc"] == loc, body
    for word in words:
        assert word in body["detail"], body
    assert _count(small_quota, "/v1/studies", "studies") == studies_before
    assert _count(small_quota, "/v1/jobs", "jobs") == jobs_before


def test_a_study_that_does_not_fit_the_quota_now_is_a_429_and_stores_nothing(small_quota: TestClient) -> None:
    # the `api` fixture has no worker: jobs stay queued and count as active
    r = small_quota.post("/v1/studies", json={"spec": small_spec(), "seeds": 3})
    assert r.status_code == 201, r.text
    first = r.json()
    assert first["counts"]["queued"] == 3 and first["table"][0]["test_at_best"] == {
        "n": 0, "mean": None, "std": None, "vs_baseline": None}  # fmt: skip
    jobs_before = _count(small_quota, "/v1/jobs", "jobs")
    r = small_quota.post("/v1/studies", json={"spec": small_spec(), "seeds": 3})
    assert r.status_code == 429 and "the study adds 3" in r.json()["detail"], r.text
    assert "Retry-After" in r.headers
    assert _count(small_quota, "/v1/jobs", "jobs") == jobs_before
    # the listing and the ?study= filter
    jobs = small_quota.get("/v1/jobs", params={"study": first["id"]}).json()["jobs"]
    assert sorted(j["id"] for j in jobs) == sorted(first["job_ids"]) and {j["study_id"] for j in jobs} == {first["id"]}
    # another tenant sees nothing of it
    other = bearer(make_key(small_quota.app.state.context.settings, "studies-other"))  # type: ignore[attr-defined]
    assert small_quota.get(f"/v1/studies/{first['id']}", headers=other).status_code == 404
    assert small_quota.post(f"/v1/studies/{first['id']}/cancel", headers=other).status_code == 404
    r = small_quota.post(f"/v1/studies/{first['id']}/cancel")
    assert r.status_code == 200 and r.json()["counts"]["cancelled"] == 3 and r.json()["done"]


@pytest.mark.parametrize("service", ["embedded"], indirect=True)
def test_client_and_cli_submit_wait_and_read_the_table(
    service: Service, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    from client_helpers import LiveServer

    from alignahead.cli import main
    from alignahead.client import Client, RetryPolicy, Study, ValidationFailed

    spec = {**SIGN_SPEC, "training": {**SIGN_SPEC["training"], "epochs": 3}}
    key = service.client.headers["Authorization"].removeprefix("Bearer ")  # the fixture's tenant
    with LiveServer(service.settings) as server, Client(server.url, key, retry=RetryPolicy(attempts=4)) as client:
        with pytest.raises(ValidationFailed, match="distillation.alfa"):
            client.submit_study(spec, seeds=2, axes={"distillation.alfa": [1]})
        study = client.submit_study(spec, seeds=2, axes={STRATEGY: ["none", "one-to-one"]}, name="client")
        assert isinstance(study, Study) and study.total == 4
        bar = io.StringIO()
        assert study.wait(file=bar, poll_interval=0.2) is study
        assert study.done and study.counts["succeeded"] == 4 and "4/4" in bar.getvalue()
        jobs = list(study.jobs(page_size=3))
        assert len(jobs) == 4 and {j.data["study_id"] for j in jobs} == {study.id}
        table = study.table()
        assert [(r["cell"][STRATEGY], r["student"]) for r in table] == [
            ("none", 0), ("none", 1), ("one-to-one", 0), ("one-to-one", 1)]  # fmt: skip
        assert table[2]["test_at_best"]["vs_baseline"]["n"] == 2
        assert study.table_csv().splitlines()[0].startswith(f"{STRATEGY},student")
        assert study.id in [s.id for s in client.studies()]

        # the CLI, on the service: submit, wait, print the same table as JSON
        path = tmp_path / "spec.yaml"
        path.write_text(yaml.safe_dump(spec))
        argv = ["study", str(path), "--seeds", "2", "--axis", "distillation.strategy=none,one-to-one", "--wait",
                "--json", "--quiet", "--url", server.url, "--api-key", key]  # fmt: skip
        assert main(argv) == 0
        out = json.loads(capsys.readouterr().out)
        assert out["counts"]["succeeded"] == 4 and out["axes"] == {STRATEGY: ["none", "one-to-one"]}
        assert [r["test_at_best"]["mean"] for r in out["table"]] == [r["test_at_best"]["mean"] for r in table]
        client.study(out["id"]).delete()
        assert study.cancel().done  # nothing left to cancel
        study.delete()
        assert all(service.client.get(f"/v1/jobs/{j.id}").status_code == 404 for j in jobs)
