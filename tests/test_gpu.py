"""The CUDA path: kernels, layers, each schedule and mixed precision on the GPU, against the CPU.

Skipped where CUDA is absent (our CI machines); run on a GPU machine with `pytest -m gpu` (what
bench/gpu_check.sh does). Float tolerance: the GPU sums in other orders (cuBLAS, cuSPARSE, atomics in
the compiled scatter kernels), so losses agree to ~1e-4 relative after a few epochs of float32
training, not to the bit.
"""

from __future__ import annotations

import pytest
import torch
from graphs import random_graph

from alignahead import JobSpec, load_student
from alignahead import kernels as k
from alignahead.datasets import load_dataset
from alignahead.kernels import compile_mode_set
from alignahead.trainer import Callbacks, History, Trainer

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine"),
]
RTOL = 1e-3  # after 3 epochs of float32 training with different summation orders


def spec_for(schedule: str, num_graphs: int, device: str, precision: str = "fp32") -> JobSpec:
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
            "training": {"epochs": 3, "lr": 0.01, "batch_size": 2, "device": device, "seed": 1, "precision": precision},
        }
    )


def train(spec: JobSpec) -> tuple[list[tuple[float, float, float]], Trainer]:
    history = History()
    trainer = Trainer(spec, load_dataset(spec.dataset, seed=1), Callbacks(history))
    result = trainer.run()
    assert not result.cancelled and result.epochs_done == 3
    return [(r.loss, r.task_loss, r.distill_loss) for r in history.rows], trainer


@pytest.mark.parametrize("mode", ["auto", "off"], ids=["compiled", "eager"])
@pytest.mark.parametrize("num_graphs", [1, 5], ids=["one-graph", "minibatches"])
@pytest.mark.parametrize("schedule", ["alternating", "simultaneous"])
def test_cuda_training_matches_the_cpu(schedule: str, num_graphs: int, mode: str) -> None:
    with compile_mode_set("off"):
        cpu, _ = train(spec_for(schedule, num_graphs, "cpu"))
    with compile_mode_set(mode):
        gpu, _ = train(spec_for(schedule, num_graphs, "cuda"))
    assert all(r[2] > 0 for r in gpu)
    for a, b in zip(cpu, gpu, strict=True):
        assert b == pytest.approx(a, rel=RTOL, abs=1e-7)


@pytest.mark.parametrize("kernel", k.kernels(), ids=[x.name for x in k.kernels()])
def test_every_kernel_compiles_on_cuda_and_equals_eager(kernel: k.Kernel) -> None:
    cuda = torch.device("cuda")
    with compile_mode_set("on"):
        assert kernel.compiled_for(cuda, torch.float32)  # Triton is there: the compiled path must really run
    c = k.csr(random_graph(500, 5000, seed=2, isolated=5).to(cuda))
    gen = torch.Generator().manual_seed(3)
    args = {
        "message sum": lambda: (c, torch.rand(5500, 3, generator=gen), torch.randn(500, 3, 8, generator=gen)),
        "edge softmax": lambda: (c, torch.randn(5500, 2, generator=gen)),
        "GAT attention": lambda: (c, torch.randn(500, 2, generator=gen), torch.randn(500, 2, generator=gen), 0.2),
        "segment sum": lambda: (c, torch.randn(5500, 4, generator=gen)),
        "segment max": lambda: (c, torch.randn(5500, 4, generator=gen)),
        "edge L1 distance": lambda: (torch.randn(500, 16, generator=gen), c.src, c.dst),
        "local structure": lambda: (c, torch.rand(5500, generator=gen) * 3, torch.tensor(1.5)),
        "structure KL": lambda: (torch.log_softmax(torch.randn(5500, generator=gen), 0),) * 2,
    }[kernel.name]()
    args = tuple(a.to(cuda) if isinstance(a, torch.Tensor) else a for a in args)
    with compile_mode_set("on"):
        compiled = kernel(*args)
    with compile_mode_set("off"):
        eager = kernel(*args)
    torch.testing.assert_close(compiled, eager, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_trains_close_to_fp32(precision: str) -> None:
    full, _ = train(spec_for("simultaneous", 1, "cuda"))
    mixed, trainer = train(spec_for("simultaneous", 1, "cuda", precision))
    assert all(torch.isfinite(torch.tensor(r)).all() for r in mixed)
    first_full, first_mixed = full[:3], mixed[:3]
    for a, b in zip(first_full, first_mixed, strict=True):  # the first epoch: a few low-precision roundings
        assert b[1] == pytest.approx(a[1], rel=5e-2)
    assert mixed[-1][1] < mixed[0][1]  # it learns


def test_a_student_trained_on_cuda_predicts_alike_on_the_cpu() -> None:
    _, trainer = train(spec_for("alternating", 1, "cuda"))
    from alignahead.checkpoints import student_bytes

    graph = trainer.train_graphs[0]
    on_gpu = trainer.predict(0, graph).cpu()
    on_cpu = load_student(student_bytes(trainer.students[0])).predict(graph.to("cpu"))
    torch.testing.assert_close(on_cpu, on_gpu, rtol=1e-4, atol=1e-4)
