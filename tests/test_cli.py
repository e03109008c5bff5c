"""`alignahead train` writes metrics and checkpoints, resumes, and refuses bad specs up front."""

import json
from pathlib import Path

import pytest
import yaml

from alignahead import JobSpec, load_student
from alignahead.cli import main
from alignahead.datasets import load_dataset
from alignahead.trainer import Trainer

SPEC = {
    "dataset": {"name": "synthetic", "synthetic": {"num_nodes": 200, "num_features": 8}},
    "students": [
        {"arch": "gat", "hidden_layers": 2, "hidden_size": 8, "heads": 2},
        {"arch": "gcn", "hidden_layers": 2},
    ],
    "distillation": {"tau": 10.0},
    "training": {"epochs": 6, "lr": 0.01, "device": "cpu"},
}


def write_spec(tmp_path: Path, spec: dict) -> Path:
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def read_rows(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_train_writes_metrics_checkpoints_and_summary(tmp_path: Path, capsys) -> None:
    out = tmp_path / "run"
    assert main(["train", str(write_spec(tmp_path, SPEC)), "--out", str(out), "--quiet"]) == 0
    rows = read_rows(out)
    assert [(r["epoch"], r["student"]) for r in rows] == [(e, s) for e in range(1, 7) for s in (0, 1)]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["epochs_done"] == 6
    assert [s["arch"] for s in summary["students"]] == ["gat", "gcn"]
    assert summary["dataset"]["features"] == "raw" and summary["dataset"]["largest_component"] is False
    for i in (0, 1):
        for kind in ("best", "final"):
            assert load_student(out / "checkpoints" / f"student-{i}-{kind}.safetensors").arch == ["gat", "gcn"][i]
    assert "student 1 (gcn): best val" in capsys.readouterr().out


def test_resume_after_interruption(tmp_path: Path) -> None:
    spec_path = write_spec(tmp_path, SPEC)
    a, b = tmp_path / "a", tmp_path / "b"
    main(["train", str(spec_path), "--out", str(a), "--quiet"])
    # a run that died during epoch 5: state of epoch 4 on disk, and a metrics row past it
    spec = JobSpec.model_validate(SPEC)
    trainer = Trainer(spec, load_dataset(spec.dataset, seed=spec.training.seed))
    trainer.run(stop_after=4)
    b.mkdir()
    (b / "state.pt").write_bytes(trainer.state_bytes())
    (b / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in read_rows(a)[: 5 * 2 - 1]))
    assert main(["train", str(spec_path), "--out", str(b), "--quiet", "--resume"]) == 0
    strip = lambda rows: [{**r, "seconds": 0} for r in rows]  # noqa: E731
    assert strip(read_rows(b)) == strip(read_rows(a))


def test_resume_refuses_the_state_of_another_spec(tmp_path: Path) -> None:
    out = tmp_path / "run"
    main(["train", str(write_spec(tmp_path, SPEC)), "--out", str(out), "--quiet"])
    longer = write_spec(tmp_path, {**SPEC, "training": {**SPEC["training"], "epochs": 9}})
    with pytest.raises(SystemExit, match="different job spec"):
        main(["train", str(longer), "--out", str(out), "--quiet", "--resume"])


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"dataset": {"name": "nope"}}, "unknown dataset 'nope'"),
        ({"students": [{"arch": "gcn", "count": 1}]}, "needs at least 2 students"),
        ({"students": [{"hidden_size": -1, "count": 2}]}, "students.0.hidden_size"),
        (
            {"students": [{"hiden_size": 8, "count": 2}]},
            "students.0.hiden_size: unknown field 'hiden_size'; did you mean 'hidden_size'?",
        ),  # fmt: skip
        ({"dataset": {"name": "pubmd"}}, "dataset: unknown dataset 'pubmd'; did you mean 'pubmed'?"),
    ],
)
def test_bad_spec_fails_before_training(tmp_path: Path, spec: dict, message: str) -> None:
    with pytest.raises(SystemExit) as err:
        main(["train", str(write_spec(tmp_path, spec)), "--out", str(tmp_path / "o")])
    assert message in str(err.value)
    assert "Value error" not in str(err.value)  # pydantic's prefix, meaningless to a reader
    assert not (tmp_path / "o").exists()


def test_example_npz_writes_a_graph_that_trains(tmp_path: Path, capsys) -> None:
    from alignahead.datasets.npz import inspect_npz

    path = tmp_path / "graph.npz"
    assert main(["example-npz", str(path), "--nodes", "300", "--classes", "3", "--features", "8"]) == 0
    assert f"alignahead upload {path}" in capsys.readouterr().out
    info = inspect_npz(path)  # what an upload checks
    assert (info["num_nodes"], info["num_features"], info["num_classes"], info["num_graphs"]) == (300, 8, 3, 1)
    assert info["num_edges"] > 300 and not info["has_split"]
    spec = {**SPEC, "dataset": {"name": "npz", "path": str(path)}, "training": {**SPEC["training"], "epochs": 2}}
    out = tmp_path / "run"
    assert main(["train", str(write_spec(tmp_path, spec)), "--out", str(out), "--quiet"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["epochs_done"] == 2 and summary["dataset"]["features"] == "row-normalized"
    assert main(["example-npz", str(path), "--classes", "1"]) == 2  # refused, naming the field
    assert "num_classes" in capsys.readouterr().err


def test_train_progress_to_a_file_is_a_few_lines(tmp_path: Path, capsys) -> None:
    spec = {**SPEC, "training": {**SPEC["training"], "epochs": 12}}
    assert main(["train", str(write_spec(tmp_path, spec)), "--out", str(tmp_path / "run")]) == 0
    err = capsys.readouterr().err  # captured: not a terminal
    lines = [line for line in err.splitlines() if line.startswith("train:")]
    assert "\r" not in err and 4 <= len(lines) <= 7, err
    assert lines[-1].startswith("train: done, epoch 12/12 (100 %)")


def test_corrupt_npz_fails_before_training(tmp_path: Path, capsys) -> None:
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"PK\x03\x04 definitely not a zip")
    spec = {**SPEC, "dataset": {"name": "npz", "path": str(bad)}}
    assert main(["train", str(write_spec(tmp_path, spec)), "--out", str(tmp_path / "o")]) == 2
    assert "bad.npz" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_datasets_lists_the_registry(capsys) -> None:
    assert main(["datasets"]) == 0
    out = capsys.readouterr().out
    for name in ("ppi", "coauthor-cs", "amazon-photo", "cora", "npz", "synthetic"):
        assert name in out


def test_threads_come_from_the_flag_or_the_environment(tmp_path: Path, monkeypatch) -> None:
    import torch

    spec = write_spec(tmp_path, {**SPEC, "training": {**SPEC["training"], "epochs": 1}})
    before = torch.get_num_threads()
    try:
        monkeypatch.setenv("ALIGNAHEAD_TORCH_THREADS", "3")
        assert main(["train", str(spec), "--out", str(tmp_path / "a"), "--quiet"]) == 0
        assert torch.get_num_threads() == 3
        assert main(["train", str(spec), "--out", str(tmp_path / "b"), "--quiet", "--threads", "2"]) == 0
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


def test_early_stop_is_reported(tmp_path: Path, capsys) -> None:
    spec = {**SPEC, "training": {**SPEC["training"], "epochs": 500, "patience": 3}}
    out = tmp_path / "run"
    assert main(["train", str(write_spec(tmp_path, spec)), "--out", str(out), "--quiet"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["epochs_done"] < 500 and "training.patience" in summary["stop_reason"]
    assert summary["stop_reason"] in capsys.readouterr().out
    assert (out / "checkpoints" / "student-1-final.safetensors").is_file()
