"""The Trainer against bench/reference.py, an independently written copy of the published loop.

Same spec, same seed: both must start from the same weights and report the same first-epoch losses,
which cross-checks the local-structure distributions, the KL, the layer pairing and the averaging
over peers against code that does not share `alignahead.structure`.
"""

import sys
from pathlib import Path

import pytest
from graphs import needs_dgl

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repo root, for `bench`

from alignahead import JobSpec  # noqa: E402
from alignahead.datasets import load_dataset  # noqa: E402
from alignahead.trainer import Callbacks, History, Trainer  # noqa: E402
from bench.compare import init_checksum  # noqa: E402

pytestmark = needs_dgl  # the reference runs the DGL-era students

RTOL = 1e-5


def make_spec(strategy: str, num_graphs: int, dropout: float) -> JobSpec:
    return JobSpec.model_validate(
        {
            "dataset": {
                "name": "synthetic",
                "synthetic": {"num_nodes": 150, "num_features": 12, "num_classes": 3, "num_graphs": num_graphs},
            },
            # three students of mixed architectures: averaging over k - 1 = 2 peers is exercised
            "students": [
                {"arch": "gat", "count": 2, "hidden_layers": 3, "hidden_size": 8, "heads": 2, "dropout": dropout},
                {"arch": "gcn", "hidden_layers": 3, "hidden_size": 8, "dropout": dropout},
            ],
            "distillation": {"strategy": strategy, "tau": 10.0},
            "training": {"epochs": 2, "batch_size": 2, "device": "cpu", "seed": 5},
        }
    )


@pytest.mark.parametrize("strategy", ["alignahead", "one-to-one"])
@pytest.mark.parametrize(
    ("num_graphs", "dropout"),
    [(1, 0.0), (5, 0.3)],  # one graph; several graphs in shuffled minibatches, with dropout's RNG draws
    ids=["transductive", "inductive-dropout"],
)
def test_reference_and_trainer_give_the_same_losses(strategy: str, num_graphs: int, dropout: float) -> None:
    spec = make_spec(strategy, num_graphs, dropout)
    from bench.reference import run_reference

    dataset = load_dataset(spec.dataset, seed=spec.training.seed)
    ref = run_reference(spec, dataset)

    history = History()
    trainer = Trainer(spec, dataset, Callbacks(on_epoch=history))
    assert init_checksum(trainer.students) == ref["init_checksum"]
    result = trainer.run()

    ours = sorted((r for r in history.rows if r.epoch == 1), key=lambda r: r.student)
    assert len(ours) == len(ref["losses"][0]) == 3
    for row, (loss, label, distill) in zip(ours, ref["losses"][0], strict=True):
        assert distill > 0  # the students differ, so there is something to distil
        assert row.loss == pytest.approx(loss, rel=RTOL)
        assert row.task_loss == pytest.approx(label, rel=RTOL)
        assert row.distill_loss == pytest.approx(distill, rel=RTOL)
    # two epochs are too few for float drift to flip a prediction: the scores match as well
    for summary, s in zip(result.students, ref["students"], strict=True):
        assert summary.best_val == pytest.approx(s["best_val"])
        assert summary.test_at_best == pytest.approx(s["test_at_best"])
