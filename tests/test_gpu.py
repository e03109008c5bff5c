"""The CUDA path: each schedule trains a few epochs on the GPU and matches the CPU run of the same spec.

Skipped where CUDA is absent (our CI machines); run on a GPU machine with `pytest -m gpu`. Float
tolerance: the GPU sums in other orders (cuBLAS, atomics in DGL's kernels, the fused kernel's triton
code), so losses agree to ~1e-4 relative after a few epochs of float32 training, not to the bit.
"""

from __future__ import annotations

import pytest
import torch

from alignahead import JobSpec
from alignahead.datasets import load_dataset
from alignahead.structure import fused_l1
from alignahead.trainer import Callbacks, History, Trainer

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine"),
]
RTOL = 1e-3  # after 3 epochs of float32 training with different summation orders


def spec_for(schedule: str, num_graphs: int, device: str) -> JobSpec:
    return JobSpec.model_validate(
        {
            "dataset": {
                "name": "synthetic",
                "synthetic": {"num_nodes": 400, "num_features": 24, "num_classes": 4, "num_graphs": num_graphs},
            },
            "students": [
                {"arch": "gat", "hidden_layers": 3, "hidden_size": 16, "heads": 2},
                {"arch": "gcn", "hidden_layers": 3, "hidden_size": 32},
                {"arch": "sage", "hidden_layers": 3, "hidden_size": 24},
            ],
            "distillation": {"strategy": "alignahead", "schedule": schedule, "tau": 10.0},
            "training": {"epochs": 3, "lr": 0.01, "batch_size": 2, "device": device, "seed": 1},
        }
    )


@pytest.mark.parametrize("num_graphs", [1, 5], ids=["one-graph", "minibatches"])
@pytest.mark.parametrize("schedule", ["alternating", "simultaneous"])
def test_cuda_training_matches_the_cpu(schedule: str, num_graphs: int) -> None:
    rows = {}
    for device in ("cpu", "cuda"):
        spec = spec_for(schedule, num_graphs, device)
        history = History()
        result = Trainer(spec, load_dataset(spec.dataset, seed=1), Callbacks(history)).run()
        assert not result.cancelled and result.epochs_done == 3
        rows[device] = [(r.loss, r.task_loss, r.distill_loss) for r in history.rows]
    assert all(r[2] > 0 for r in rows["cuda"])
    for cpu, gpu in zip(rows["cpu"], rows["cuda"], strict=True):
        assert gpu == pytest.approx(cpu, rel=RTOL, abs=1e-7)


def test_fused_distance_compiles_on_cuda() -> None:
    assert fused_l1.usable(torch.zeros(2, 2, device="cuda"))
