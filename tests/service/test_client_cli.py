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
    # progress on stderr: not a terminal here, so a few plain lines rather than a line per refresh
    assert "\r" not in err and f"job {job['id'][:8]}: succeeded, epoch 4/4 (100 %)" in err
    assert len([line for line in err.splitlines() if line.startswith(f"job {job['id'][:8]}:")]) <= 7, err

    code, out, _ = run(capsys, "jobs", "--name", name, "--json", "--url", live)
    assert code == 0 and [j["id"] for j in json.loads(out)] == [job["id"]]
    code, out, _ = run(capsys, "jobs", "--status", "succeeded", "--url", live)
    assert code == 0 and job["id"] in out and name in out  # a table with the whole id

    code, out, _ = run(capsys, "status", job["id"][:8], "--url", live)  # the start of an id, as shown above
    assert code == 0 and job["id"] in out and "succeeded" in out and "epoch 4/4" in out and "test at best" in out
    assert f"{100 * job['students'][1]['best_val']:.1f} %" in out  # percent, as the dashboard shows scores

    rows = service.metrics(job["id"])["rows"]
    code, out, _ = run(capsys, "metrics", job["id"], "--json", "--url", live)
    assert code == 0 and json.loads(out) == rows
    code, out, _ = run(capsys, "metrics", job["id"], "--follow", "--json", "--student", "1", "--url", live)
    assert code == 0 and [json.loads(line)["seq"] for line in out.splitlines()] == [
        r["seq"] for r in rows if r["student"] == 1
    ]

    target = tmp_path / "s1.safetensors"
    argv = ["download", job["id"][:6], "--student", "1", "--kind", "final", "-o", str(target), "--url", live]
    code, out, _ = run(capsys, *argv)
    assert code == 0 and "sha256 verified" in out
    listing = service.client.get(f"/v1/jobs/{job['id']}/checkpoints").json()["students"]
    assert hashlib.sha256(target.read_bytes()).hexdigest() == listing[1]["final"]["sha256"]

    # cancelling a finished job: its goal holds already, so exit 0, saying so
    code, out, err = run(capsys, "cancel", job["id"], "--url", live)
    assert code == 0 and f"job {job['id']} had already finished (succeeded); nothing to cancel" in out
    # the server's refusals, printed in the CLI's words, with a non-zero exit
    code, _, err = run(capsys, "status", "0" * 32, "--url", live)
    assert code == 1 and "no job with id" in err and "`alignahead jobs` lists them" in err and "/v1" not in err
    code, _, err = run(capsys, "delete", "0" * 8, "--url", live)  # a start that no id has: not found either
    assert code == 1 and "no job with id '00000000'" in err


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
    assert "the key came from --api-key" in err and "ALIGNAHEAD_API_KEY" in err and "var/local-api-key" in err


def test_errors_speak_the_clis_words(live: str, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    """Flags, environment variables and the key file, not HTTP headers or Python arguments."""
    monkeypatch.delenv("ALIGNAHEAD_API_KEY")
    code, _, err = run(capsys, "jobs", "--url", live)
    assert code == 1 and "no API key given: pass --api-key KEY or set ALIGNAHEAD_API_KEY" in err
    assert "export ALIGNAHEAD_API_KEY=$(cat var/local-api-key)" in err and "Authorization" not in err

    from svc_helpers import free_port

    nowhere = f"http://127.0.0.1:{free_port()}"
    code, _, err = run(capsys, "jobs", "--url", nowhere, "--api-key", "k")
    assert code == 1 and f"cannot reach the alignahead service at {nowhere}" in err
    assert "--url URL or ALIGNAHEAD_URL" in err and "url=" not in err


def test_cancel_exits_0_whenever_the_job_ends_up_stopped(
    live: str, service: Service, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from svc_helpers import long_spec

    job = service.submit(long_spec(epochs=300))
    code, out, err = run(capsys, "cancel", job["id"][:8], "--url", live)
    assert code == 0, err
    assert f"job {job['id']}" in out and ("cancel requested" in out or "cancelled" in out)
    service.wait(job["id"], until=("cancelled",))
    code, out, err = run(capsys, "cancel", job["id"], "--url", live)  # again: it had finished, cancelled
    assert code == 0 and f"job {job['id']} had already finished (cancelled); nothing to cancel" in out


def test_a_misspelt_field_is_answered_with_the_nearest_one(
    live: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    spec = small_spec()
    spec["students"][0]["hiden_size"] = 8
    spec["dataset"]["name"] = "corra"
    path = tmp_path / "typo.json"
    path.write_text(json.dumps(spec))
    code, _, err = run(capsys, "submit", str(path), "--url", live)
    assert code == 1
    assert "students.0.hiden_size: unknown field 'hiden_size'; did you mean 'hidden_size'?" in err
    assert "unknown dataset 'corra'; did you mean 'cora'?" in err and "Value error" not in err


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
