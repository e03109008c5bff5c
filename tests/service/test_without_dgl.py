"""Training needs no DGL: the CLI, the API and a worker train a job with `import dgl` made to fail.

A folder on PYTHONPATH holds a `dgl` package whose import raises ImportError, as on Python 3.12 where
no DGL wheel imports with current PyTorch. Every process started here (the CLI, the uvicorn API, the
Celery worker) inherits it; a job must still train, its checkpoint load and predict.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from svc_helpers import ROOT, ApiServer, Worker, embedded_settings, make_key, migrate

SPEC = {
    "dataset": {"name": "synthetic", "synthetic": {"num_nodes": 200, "num_features": 8}},
    "students": [
        {"arch": "gat", "hidden_layers": 2, "hidden_size": 8, "heads": 2},
        {"arch": "gcn", "hidden_layers": 2, "hidden_size": 16},
        {"arch": "sage", "hidden_layers": 2, "hidden_size": 16, "aggregator": "pool"},
    ],
    "distillation": {"tau": "auto"},
    "training": {"epochs": 5, "lr": 0.01, "device": "cpu"},
}
# Loads a checkpoint, rebuilds its graph and predicts; fails if anything imported DGL.
PREDICT = """
import sys
import alignahead
student = alignahead.load_student(sys.argv[1])
graph = alignahead.load_graph(student)
logits = student.predict(alignahead.prepare_graph(graph))
mask = graph.ndata["test_mask"]
accuracy = (logits[mask].argmax(1) == graph.ndata["label"][mask]).float().mean().item()
assert "dgl" not in sys.modules or sys.modules["dgl"] is None, "something imported dgl"
print(f"accuracy {accuracy:.3f}")
"""


@pytest.fixture
def dgl_unimportable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    blocker = tmp_path / "no-dgl"
    (blocker / "dgl").mkdir(parents=True)
    (blocker / "dgl" / "__init__.py").write_text('raise ImportError("dgl is made unimportable by this test")\n')
    monkeypatch.setenv("PYTHONPATH", str(blocker))  # what settings_env hands the API and the worker too
    env = {**os.environ, "PYTHONPATH": f"{blocker}{os.pathsep}{ROOT}"}
    check = subprocess.run([sys.executable, "-c", "import dgl"], env=env, capture_output=True, text=True)
    assert check.returncode != 0 and "made unimportable" in check.stderr  # the blocker works
    return env


def predict(checkpoint: Path, env: dict[str, str]) -> float:
    out = subprocess.run([sys.executable, "-c", PREDICT, str(checkpoint)], env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    return float(out.stdout.split()[-1])


def test_the_cli_trains_and_predicts_without_dgl(tmp_path: Path, dgl_unimportable: dict[str, str]) -> None:
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump(SPEC))
    run = subprocess.run(
        [sys.executable, "-m", "alignahead.cli", "train", str(spec), "--out", str(tmp_path / "run"), "--quiet"],
        env=dgl_unimportable,
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert run.returncode == 0, run.stderr
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    for i, student in enumerate(summary["students"]):  # the best checkpoint predicts the recorded test score
        accuracy = predict(tmp_path / "run" / "checkpoints" / f"student-{i}-best.safetensors", dgl_unimportable)
        assert accuracy == pytest.approx(student["test_at_best"], abs=1e-3)


def test_the_api_and_a_worker_train_a_job_without_dgl(tmp_path: Path, dgl_unimportable: dict[str, str]) -> None:
    settings = embedded_settings(tmp_path / "svc")
    migrate(settings.database_url)
    api = ApiServer(settings, tmp_path / "api.log", key=make_key(settings, "tests"))
    worker = Worker(settings, tmp_path / "worker.log", "no-dgl")
    try:
        api.wait_ready()
        worker.wait_ready()
        with api.client() as client:
            job = client.post("/v1/jobs", json=SPEC).json()
            with client.stream("GET", f"/v1/jobs/{job['id']}/events") as events:  # until the job's end event
                for line in events.iter_lines():
                    if line.startswith("event: end"):
                        break
            job = client.get(f"/v1/jobs/{job['id']}").json()
            assert job["status"] == "succeeded", (job, worker.log()[-3000:])
            data = client.get(f"/v1/jobs/{job['id']}/checkpoints/2/best").content
        checkpoint = tmp_path / "student2.safetensors"
        checkpoint.write_bytes(data)
        assert predict(checkpoint, dgl_unimportable) == pytest.approx(job["students"][2]["test_at_best"], abs=1e-3)
        assert "made unimportable" not in worker.log() + (tmp_path / "api.log").read_text()
    finally:
        worker.stop()
        api.kill()
