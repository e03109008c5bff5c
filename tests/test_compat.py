"""What the DGL-era students computed, today's plain-PyTorch ones compute too.

The fixtures in tests/fixtures/dgl_era were written by the students built from DGL's layers (see
its README): checkpoints of every architecture and aggregator with their logits, and the losses of
three short trainings. Checkpoints must load and predict the same logits (1e-5); the trainer's first
epoch must give the same losses (1e-5 relative in float32) and, in float64, every epoch's losses must
agree to 1e-10 with the same scores, from the DGL-era students' initial weights (in float64 those
come from the fixtures: DGL drew some of them in float32).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from alignahead import JobSpec, load_graph, load_student
from alignahead.datasets import load_dataset
from alignahead.kernels import compile_mode_set
from alignahead.trainer import Callbacks, History, Trainer

FIXTURES = Path(__file__).parent / "fixtures" / "dgl_era"
LOGITS = load_file(FIXTURES / "logits.safetensors")
RUNS = json.loads((FIXTURES / "trainer_losses.json").read_text())


@pytest.mark.parametrize("name", sorted(LOGITS))
def test_dgl_era_checkpoints_predict_the_same_logits(name: str) -> None:
    student = load_student(FIXTURES / f"{name}.safetensors")
    logits = student.predict(load_graph(student, "test"))  # the graph rebuilt from the checkpoint's metadata
    torch.testing.assert_close(logits, LOGITS[name], rtol=1e-5, atol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(LOGITS))
def test_dgl_era_checkpoints_predict_the_same_logits_compiled(name: str) -> None:
    with compile_mode_set("on"):
        test_dgl_era_checkpoints_predict_the_same_logits(name)


def train(name: str, float64: bool) -> tuple[list[list], list[list]]:
    spec = JobSpec.model_validate({k: v for k, v in RUNS[name]["spec"].items() if k != "name"})
    dataset = load_dataset(spec.dataset, seed=spec.training.seed)
    before = torch.get_default_dtype()
    if float64:
        torch.set_default_dtype(torch.float64)  # students are built in double precision
        for graphs in (dataset.train, dataset.val, dataset.test):
            for g in graphs:
                for key in ("feat", "label"):
                    if g.ndata[key].is_floating_point():
                        g.ndata[key] = g.ndata[key].double()
    try:
        history = History()
        trainer = Trainer(spec, dataset, Callbacks(on_epoch=history))
        if float64:  # the DGL-era students' initial weights, every one made double (see the fixtures' README)
            init = load_file(FIXTURES / f"init64-{name}.safetensors")
            for i, student in enumerate(trainer.students):
                student.load_state_dict({k.split(".", 1)[1]: v for k, v in init.items() if k.split(".")[0] == str(i)})
            torch.set_rng_state(init["rng_state"])
        result = trainer.run()
    finally:
        torch.set_default_dtype(before)
    rows = [[r.epoch, r.student, r.loss, r.task_loss, r.distill_loss, r.val_score, r.test_score] for r in history.rows]
    return rows, [[s.best_val, s.best_epoch, s.test_at_best] for s in result.students]


@pytest.mark.parametrize("name", sorted(RUNS))
def test_first_epoch_losses_equal_the_dgl_era_trainer_in_float32(name: str) -> None:
    expected = RUNS[name]["float32"]["rows"]
    rows, _ = train(name, float64=False)
    first = [r for r in rows if r[0] == 1]
    assert len(first) == len([r for r in expected if r[0] == 1]) > 0
    for got, want in zip(first, expected, strict=False):
        assert got[:2] == want[:2]
        assert got[2:5] == pytest.approx(want[2:5], rel=1e-5, abs=1e-9)


@pytest.mark.parametrize("name", sorted(RUNS))
def test_every_epoch_equals_the_dgl_era_trainer_in_float64(name: str) -> None:
    expected = RUNS[name]["float64"]
    rows, best = train(name, float64=True)
    assert len(rows) == len(expected["rows"])
    for got, want in zip(rows, expected["rows"], strict=True):
        assert got[:2] == want[:2]
        assert got[2:5] == pytest.approx(want[2:5], rel=1e-10, abs=1e-13)
        assert got[5:] == want[5:]  # the same predictions: identical scores
    assert best == expected["best"]
