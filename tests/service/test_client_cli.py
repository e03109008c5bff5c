"""The `alignahead` service commands against the real API (over HTTP) and a real worker."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from client_helpers import LiveServer
from svc_helpers import ROOT, Service, small_spec

from alignahead.cli import main

pytestmark = pytest.mark.parametrize("service", ["embedded"], indirect=True)


@pytest.fixture(scope="module")
def live(service: Service) -> Iterator[str]:
    with LiveServer(service.settings) as server:
        yield server.url


@pytest.fixture(autouse=True)
def api_key(service: Service, monkeypatch: pytest.MonkeyPatch) -> str:
    """The commands read their key from the environment, as a user's shell provides it."""
    monkeypatch.setenv("ALIGNAHEAD_API_KEY", service.key)
    return service.key


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_submit_wait_list_status_metrics_download(
    live: str, service: Service, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    spec = tmp_path / "job.yaml"
    spec.write_text(yaml.safe_dump(small_spec(epochs=4)))
    name = f"cli-{uuid.uuid4().hex[:8]}"

    code, out, err = run(capsys, "submit", str(spec), "--name", name, "--wait", "--json", "--url", live)
    assert code == 0, err
    job = json.loads(out)
    assert job["status"] == "succeeded" and job["name"] == name
    assert "4/4" in err  # the progress bar, on stderr

    code, out, _ = run(capsys, "jobs", "--name", name, "--json", "--url", live)
    assert code == 0 and [j["id"] for j in json.loads(out)] == [job["id"]]
    code, out, _ = run(capsys, "jobs", "--status", "succeeded", "--url", live)
    assert code == 0 and job["id"] in out and name in out  # a table with the whole id

    code, out, _ = run(capsys, "status", job["id"], "--url", live)
    assert code == 0 and "succeeded" in out and "epoch 4/4" in out and "test at best" in out
    best = f"{job['students'][1]['best_val']:.4f}"
    assert best in out

    rows = service.metrics(job["id"])["rows"]
    code, out, _ = run(capsys, "metrics", job["id"], "--json", "--url", live)
    assert code == 0 and json.loads(out) == rows
    code, out, _ = run(capsys, "metrics", job["id"], "--follow", "--json", "--student", "1", "--url", live)
    assert code == 0 and [json.loads(line)["seq"] for line in out.splitlines()] == [
        r["seq"] for r in rows if r["student"] == 1
    ]

    target = tmp_path / "s1.safetensors"
    argv = ["download", job["id"], "--student", "1", "--kind", "final", "-o", str(target), "--url", live]
    code, out, _ = run(capsys, *argv)
    assert code == 0 and "sha256 verified" in out
    listing = service.client.get(f"/v1/jobs/{job['id']}/checkpoints").json()["students"]
    assert hashlib.sha256(target.read_bytes()).hexdigest() == listing[1]["final"]["sha256"]

    # the server's refusals, printed, with a non-zero exit
    code, out, err = run(capsys, "cancel", job["id"], "--url", live)
    assert code == 1 and f"job {job['id']} is already succeeded" in err and out == ""
    code, _, err = run(capsys, "status", "0" * 32, "--url", live)
    assert code == 1 and "no job with id" in err


def test_jobs_by_tag_and_a_jobs_logs(live: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    tag = f"cli{uuid.uuid4().hex[:8]}"
    spec = tmp_path / "job.yaml"
    spec.write_text(yaml.safe_dump(small_spec(epochs=1) | {"tags": [tag, "other"]}))
    code, out, err = run(capsys, "submit", str(spec), "--wait", "--quiet", "--json", "--url", live)
    assert code == 0, err
    job = json.loads(out)
    code, out, _ = run(capsys, "jobs", "--tag", tag, "--tag", "other", "--json", "--url", live)
    assert code == 0 and [j["id"] for j in json.loads(out)] == [job["id"]]
    code, out, _ = run(capsys, "jobs", "--tag", tag, "--status", "succeeded", "--url", live)
    assert code == 0 and job["id"] in out and f"{tag},other" in out
    code, out, err = run(capsys, "jobs", "--tag", tag, "--status", "failed", "--url", live)
    assert code == 0 and job["id"] not in out and "no jobs matching" in err

    code, out, _ = run(capsys, "logs", job["id"], "--url", live)
    assert code == 0
    assert f"INFO    alignahead.worker: job {job['id']}: attempt 1 on worker" in out
    assert f"job {job['id']} ends succeeded" in out.splitlines()[-1]


def test_bad_spec_prints_the_servers_message(live: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    spec = small_spec()
    spec["students"][0]["arch"] = "transformer"
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(spec))
    code, out, err = run(capsys, "submit", str(path), "--url", live)
    assert code == 1 and out == ""
    assert "error:" in err and "students.0.arch" in err and "'gat', 'gcn' or 'sage'" in err and "HTTP 422" in err


def test_a_wrong_key_prints_the_servers_message(live: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "jobs", "--url", live, "--api-key", "alh_0000_not-a-key")  # the flag wins
    assert code == 1 and out == ""
    assert "error:" in err and "the API key is unknown, revoked or malformed" in err and "HTTP 401" in err


def test_the_cli_reads_the_environment_and_loads_neither_service_nor_torch(live: str, api_key: str) -> None:
    probe = (
        "import sys; from alignahead.cli import main; code = main(['jobs', '--json']); "
        "loaded = sorted({m.split('.')[0] for m in sys.modules} & {'service', 'worker', 'torch', 'dgl'}); "
        "print(loaded, file=sys.stderr); sys.exit(code)"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("ALIGNAHEAD_")}
    env |= {"ALIGNAHEAD_URL": live, "ALIGNAHEAD_API_KEY": api_key, "PYTHONPATH": str(ROOT)}
    r = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert isinstance(json.loads(r.stdout), list)
    assert r.stderr.strip().splitlines()[-1] == "[]"
