"""The Python client against the real API (over HTTP, uvicorn) and a real Celery worker.

The client's behaviour does not depend on the database, so these run on the embedded backend only.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from client_helpers import LiveServer
from sqlalchemy import text
from svc_helpers import ROOT, Service, long_spec, npz_bytes, small_spec

import alignahead
from alignahead.client import Client, JobFailed, NotFound, RetryPolicy, Unauthorized, ValidationFailed
from alignahead.datasets import DatasetError
from alignahead.trainer import score

pytestmark = pytest.mark.parametrize("service", ["embedded"], indirect=True)


@pytest.fixture(scope="module")
def live(service: Service) -> Iterator[str]:
    with LiveServer(service.settings) as server:
        yield server.url


@pytest.fixture
def client(live: str, service: Service) -> Iterator[Client]:
    with Client(live, api_key=service.key, retry=RetryPolicy(attempts=4)) as c:
        yield c


def split_score(student: alignahead.models.Student, graph, split: str, multilabel: bool = False) -> float:
    """A split's score computed as a user would: predict, then accuracy over the split's mask."""
    logits = student.predict(graph)
    mask = graph.ndata[f"{split}_mask"]
    num, den = score(logits[mask], graph.ndata["label"][mask], multilabel)
    return num / den


def test_submit_wait_metrics_download_and_reproduce_test_at_best(
    client: Client, service: Service, tmp_path: Path
) -> None:
    name = f"client-{uuid.uuid4().hex[:8]}"
    job = client.submit(small_spec(epochs=5), name=name)
    assert job.status == "queued" and job.name == name

    bar = io.StringIO()
    assert job.wait(file=bar) is job
    assert job.status == "succeeded" and job.progress == {"epoch": 5, "total": 5}
    assert "5/5 (100 %)" in bar.getvalue() and "best val s0=" in bar.getvalue()

    # every row, paged behind the scenes, equal to what the API holds
    rows = job.metrics(page_size=3)
    assert rows == service.metrics(job.id)["rows"]
    assert sorted((r["epoch"], r["student"]) for r in rows) == [(e, s) for e in range(1, 6) for s in (0, 1)]
    assert [r["epoch"] for r in job.metrics(student=1)] == [1, 2, 3, 4, 5]

    listing = service.client.get(f"/v1/jobs/{job.id}/checkpoints").json()["students"]
    for summary in job.students:
        i = summary["student"]
        path = job.download(student=i, path=tmp_path)
        assert path == tmp_path / f"{job.id}-student{i}-best.safetensors"
        assert hashlib.sha256(path.read_bytes()).hexdigest() == listing[i]["best"]["sha256"]

        # inference as written in the README: the checkpoint knows its graph
        student = job.load_student(i)
        assert student.metadata["seed"] == "0" and '"name":"synthetic"' in student.metadata["dataset"]
        graph = alignahead.load_graph(student, split="test")
        assert split_score(student, graph, "test") == pytest.approx(summary["test_at_best"], abs=1e-12)
        assert split_score(student, graph, "val") == pytest.approx(summary["best_val"], abs=1e-12)
        from_file = alignahead.load_student(path).state_dict()
        assert all(torch.equal(from_file[k], v) for k, v in student.state_dict().items())

    final = job.download(student=1, kind="final", path=tmp_path / "final.safetensors")
    assert hashlib.sha256(final.read_bytes()).hexdigest() == listing[1]["final"]["sha256"]

    assert [j.id for j in client.jobs(name=name)] == [job.id]
    assert job.id in {j.id for j in client.jobs(status="succeeded")}
    assert job.id not in {j.id for j in client.jobs(status="running")}

    job.delete()
    with pytest.raises(NotFound, match=f"no job with id '{job.id}'"):
        client.job(job.id)


def test_jobs_by_name_and_tags(client: Client) -> None:
    run = uuid.uuid4().hex[:8]
    a = client.submit(small_spec(epochs=1) | {"tags": [f"c{run}", "big"]}, name=f"n{run}")
    b = client.submit(small_spec(epochs=1) | {"tags": [f"c{run}"]}, name=f"n{run}-b")
    assert a.tags == [f"c{run}", "big"] and a.name == f"n{run}"
    assert [j.id for j in client.jobs(tag=f"c{run}")] == [b.id, a.id]
    assert [j.id for j in client.jobs(tag=[f"c{run}", "big"])] == [a.id]
    assert [j.id for j in client.jobs(name=f"n{run}", tag=f"c{run}")] == [a.id]
    assert [j.tags for j in client.jobs(tag=f"c{run}")] == [[f"c{run}"], [f"c{run}", "big"]]
    a.wait(progress=False)
    b.wait(progress=False)
    assert [j.id for j in client.jobs(status="succeeded", tag=f"c{run}")] == [b.id, a.id]
    lines = a.logs()
    assert lines[0]["logger"] == "alignahead.worker" and f"job {a.id}: attempt 1" in lines[0]["message"]
    assert a.logs(since=lines[-2]["seq"]) == lines[-1:]


def test_cancel_a_running_job(client: Client) -> None:
    job = client.submit(long_spec(epochs=300, num_nodes=1500))
    for event in job.events():  # wait for the first epoch's rows: it is running
        if event.kind == "metric":
            break
    job.cancel()
    assert job.status == "cancelled" or job.data["cancel_requested"] is True
    job.wait(progress=False)
    assert job.status == "cancelled" and job.progress["epoch"] < 300
    assert job.cancel().status == "cancelled"  # cancelling a cancelled job changes nothing
    assert len(job.metrics()) == 2 * job.progress["epoch"]


def test_bad_spec_and_unknown_ids_show_the_servers_message(client: Client, tmp_path: Path) -> None:
    spec = small_spec()
    spec["training"]["bogus"] = 1
    spec["dataset"]["synthetic"]["num_nodes"] = 3
    with pytest.raises(ValidationFailed) as e:
        client.submit(spec)
    assert e.value.status_code == 422
    assert "unknown field 'bogus'" in str(e.value) and "greater than or equal to 10" in str(e.value)
    assert ["body", "training", "bogus"] in [err["loc"] for err in e.value.errors]

    spec = small_spec()
    spec["dataset"] = {"name": "upload", "upload_id": "0" * 32}
    with pytest.raises(ValidationFailed, match="no uploaded dataset with id"):
        client.submit(spec)
    with pytest.raises(NotFound, match="no job with id 'nope'"):
        client.job("nope")
    path = tmp_path / "spec.yaml"
    path.write_text("dataset: [unclosed")
    with pytest.raises(ValueError, match="cannot read spec"):
        client.submit(path)


def test_a_wrong_or_missing_key_shows_the_servers_message(live: str, client: Client) -> None:
    job = client.submit(small_spec(epochs=1))
    with Client(live, api_key="alh_0000_not-a-key", retry=RetryPolicy(attempts=2)) as wrong:
        with pytest.raises(Unauthorized, match="the API key is unknown, revoked or malformed") as e:
            wrong.job(job.id)
        assert e.value.status_code == 401
        with pytest.raises(Unauthorized, match="unknown, revoked or malformed"):
            wrong.submit(small_spec(epochs=1))
    with Client(live, api_key="", retry=RetryPolicy(attempts=2)) as anonymous:
        with pytest.raises(Unauthorized, match="this endpoint needs an API key"):
            list(anonymous.jobs())
    job.wait(progress=False)


def test_uploaded_graph_inference_and_a_failed_job(client: Client, service: Service, tmp_path: Path) -> None:
    f = tmp_path / "graph.npz"
    f.write_bytes(npz_bytes(n=90, classes=3, seed=1))
    up = client.upload_dataset(f)
    assert up["summary"]["num_nodes"] == 90
    spec = small_spec(epochs=3)
    spec["dataset"] = dict(up["dataset_spec"], split={"train_per_class": 5, "val_per_class": 5})
    job = client.submit(spec).wait(progress=False)

    student = job.load_student(0)
    with pytest.raises(DatasetError, match="pass your copy of the file"):
        alignahead.load_graph(student)
    graph = alignahead.load_graph(student, npz=f)
    assert split_score(student, graph, "test") == pytest.approx(job.students[0]["test_at_best"], abs=1e-12)

    # a job whose data turns out unreadable: wait raises with the worker's reason
    bad = client.upload_dataset(f)
    with service.engine.begin() as conn:  # corrupted behind the API's back
        conn.execute(text("UPDATE uploads SET data = :d WHERE id = :id"), {"d": b"PK\x03\x04 junk", "id": bad["id"]})
    spec["dataset"] = bad["dataset_spec"]
    failing = client.submit(spec)
    with pytest.raises(JobFailed, match=f"job {failing.id} failed: .*npz"):
        failing.wait(progress=False)
    assert failing.wait(progress=False, raise_on_failure=False).status == "failed"


def test_quickstart_example_runs_as_written(live: str, client: Client, service: Service, tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ALIGNAHEAD_")}
    env |= {"ALIGNAHEAD_URL": live, "ALIGNAHEAD_API_KEY": service.key, "PYTHONPATH": str(ROOT)}
    script = ROOT / "examples" / "quickstart.py"
    r = subprocess.run(
        [sys.executable, str(script), "--out", "curves.png"], cwd=tmp_path, env=env, capture_output=True, text=True,
        timeout=600,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    job_id = re.search(r"submitted job ([0-9a-f]{32})", r.stdout).group(1)
    pattern = r"best student: (\d+) .* its test accuracy: ([0-9.]+) % \(the service reported ([0-9.]+) %\)"
    found = re.search(pattern, r.stdout)
    assert found, r.stdout
    assert found.group(2) == found.group(3)
    job = client.job(job_id)
    assert job.status == "succeeded"
    best = max(job.students, key=lambda s: s["best_val"])
    assert int(found.group(1)) == best["student"] and f"{100 * best['test_at_best']:.1f}" == found.group(2)
    png = (tmp_path / "curves.png").read_bytes()
    assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 20_000  # four panels of curves, not an empty canvas
