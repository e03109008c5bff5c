"""The kernels of message passing and of the local structure: compiled equals eager equals the plain math.

Every kernel is checked three ways on random multigraphs with nodes of no in-edges: its eager (CSR)
version against its plain index-op version, compiled against eager (values and gradients), and the
eager gradients by gradcheck in float64. Compilation happens once per test session (it is cached per process).
"""

from __future__ import annotations

import logging

import pytest
import torch
from graphs import random_graph

from alignahead import kernels
from alignahead.kernels import Kernel, compile_mode_set, csr


def inputs(kernel: Kernel, n: int, e: int, dtype: torch.dtype, seed: int) -> tuple:
    """Arguments for `kernel` on a random multigraph of n nodes, e edges, its last 3 nodes without in-edges."""
    c = csr(random_graph(n, e, seed, self_loops=False, isolated=3))
    gen = torch.Generator().manual_seed(seed)

    def randn(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=gen, dtype=torch.float64).to(dtype)

    m = c.src.numel()
    return {
        "message sum": lambda: (c, randn(m, 3), randn(n, 3, 5)),
        "edge softmax": lambda: (c, randn(m, 2) * 4),
        "GAT attention": lambda: (c, randn(n, 2), randn(n, 2), 0.2),
        "segment sum": lambda: (c, randn(m, 4)),
        "segment max": lambda: (c, randn(m, 4)),
        "edge L1 distance": lambda: (randn(n, 7), c.src, c.dst),
        "local structure": lambda: (c, randn(m).abs() * 3, torch.tensor(1.5, dtype=dtype)),
        "structure KL": lambda: (torch.log_softmax(randn(m), 0), torch.log_softmax(randn(m), 0)),
    }[kernel.name]()


def run(f, args: tuple) -> tuple[torch.Tensor, list[torch.Tensor]]:  # noqa: ANN001 - a kernel implementation
    """f's output and the gradients of a random weighting of it with respect to each float input."""
    args = tuple(a.detach().clone().requires_grad_(True) if _float(a) else a for a in args)
    out = f(*args)
    weight = torch.randn(out.shape, generator=torch.Generator().manual_seed(7), dtype=out.dtype)
    grads = torch.autograd.grad((out * weight).sum(), [a for a in args if _float(a)], allow_unused=True)
    return out.detach(), [torch.zeros(()) if g is None else g for g in grads]


def _float(a: object) -> bool:
    return isinstance(a, torch.Tensor) and a.is_floating_point() and a.dim() > 0


ALL = kernels.kernels()


@pytest.mark.parametrize("kernel", ALL, ids=[k.name for k in ALL])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_eager_equals_the_plain_math(kernel: Kernel, dtype: torch.dtype) -> None:
    args = inputs(kernel, 60, 400, dtype, seed=1)
    (out_e, grads_e), (out_p, grads_p) = run(kernel.eager, args), run(kernel.plain, args)
    tol = {"rtol": 1e-5, "atol": 1e-5} if dtype == torch.float32 else {"rtol": 1e-12, "atol": 1e-12}
    torch.testing.assert_close(out_e, out_p, **tol)
    for a, b in zip(grads_e, grads_p, strict=True):
        torch.testing.assert_close(a, b, **tol)


@pytest.mark.parametrize("kernel", ALL, ids=[k.name for k in ALL])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_compiled_equals_eager_and_really_runs_here(kernel: Kernel, dtype: torch.dtype) -> None:
    with compile_mode_set("on"):
        # this machine has a C++ compiler: the compiled path must really run, not silently fall back
        assert kernel.compiled_for(torch.device("cpu"), dtype)
        args = inputs(kernel, 300, 3000, dtype, seed=2)
        compiled = run(kernel, args)
    with compile_mode_set("off"):
        eager = run(kernel, args)
    tol = {"rtol": 1e-4, "atol": 1e-4} if dtype == torch.float32 else {"rtol": 1e-10, "atol": 1e-10}
    torch.testing.assert_close(compiled[0], eager[0], **tol)
    for a, b in zip(compiled[1], eager[1], strict=True):
        torch.testing.assert_close(a, b, **tol)


@pytest.mark.parametrize("kernel", ALL, ids=[k.name for k in ALL])
def test_eager_gradients_pass_gradcheck_in_float64(kernel: Kernel) -> None:
    """(The compiled gradients equal these: test_compiled_equals_eager_and_really_runs_here.)"""
    args = inputs(kernel, 12, 40, torch.float64, seed=3)
    if kernel.name == "edge L1 distance":  # away from zero differences, where |x| has a kink
        args = (args[0] * 4, *args[1:])
    if kernel.name == "segment max":  # distinct values: the maximum's gradient is defined
        args = (args[0], torch.randperm(args[1].numel(), dtype=torch.float64).view_as(args[1]))
    with compile_mode_set("off"):
        floats = [i for i, a in enumerate(args) if _float(a)]

        def f(*xs: torch.Tensor) -> torch.Tensor:
            full = list(args)
            for i, x in zip(floats, xs, strict=True):
                full[i] = x
            return kernel(*full)

        assert torch.autograd.gradcheck(f, tuple(args[i].clone().requires_grad_(True) for i in floats))


def test_first_use_without_grad_still_checks_the_gradients() -> None:
    fresh = Kernel("fresh L1", kernels.edge_l1_plain, example=kernels.EDGE_L1.example, auto=("cpu",))
    with compile_mode_set("auto"), torch.no_grad():
        assert fresh.compiled_for(torch.device("cpu"), torch.float64)


def test_a_kernel_that_disagrees_falls_back_to_eager_with_one_log_line(caplog: pytest.LogCaptureFixture) -> None:
    wrong = Kernel("wrong", lambda x: x * 2, lambda x: x * 3, example=lambda d, t: (torch.ones(3, dtype=t),))
    with compile_mode_set("on"), caplog.at_level(logging.WARNING, "alignahead.kernels"):
        assert torch.equal(wrong(torch.ones(2)), torch.full((2,), 3.0))  # the eager one
        assert torch.equal(wrong(torch.ones(2)), torch.full((2,), 3.0))
    expected = "compiled wrong disagrees with eager on cpu/torch.float32; using eager"
    assert [r.getMessage() for r in caplog.records] == [expected]


def test_a_kernel_that_cannot_compile_falls_back_to_eager(caplog: pytest.LogCaptureFixture) -> None:
    def broken(x: torch.Tensor) -> torch.Tensor:
        raise RuntimeError("no compiler for this")

    k = Kernel("broken", broken, lambda x: x + 1, example=lambda d, t: (torch.ones(3, dtype=t),))
    with compile_mode_set("on"), caplog.at_level(logging.WARNING, "alignahead.kernels"):
        assert torch.equal(k(torch.zeros(2)), torch.ones(2))
    assert len(caplog.records) == 1 and "broken unavailable on cpu" in caplog.records[0].getMessage()
    assert "no compiler for this" in caplog.records[0].getMessage()


def test_the_policy_auto_compiles_only_the_edge_distance_on_the_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    cpu = torch.device("cpu")
    with compile_mode_set("auto"):
        assert [k.name for k in ALL if k.compiled_for(cpu, torch.float32)] == ["edge L1 distance"]
    with compile_mode_set("off"):
        assert not any(k.compiled_for(cpu, torch.float32) for k in ALL)
    monkeypatch.setenv("ALIGNAHEAD_COMPILE", "on")
    with compile_mode_set(None):  # None: read the environment
        assert kernels.compile_mode() == "on"
    with pytest.raises(ValueError, match="compile mode"):
        kernels.set_compile_mode("sometimes")


@pytest.mark.parametrize("mode", ["off", "on"])
def test_a_maximum_reached_by_a_repeated_edge_passes_its_gradient_once(mode: str) -> None:
    """Two copies of an edge tie for the maximum: the source gets the gradient once, as the math says
    (the layer test found torch.segment_reduce's backward giving it twice)."""
    g = random_graph(30, 120, seed=1, self_loops=False, isolated=4)  # a multigraph: some edges repeated
    c = csr(g)
    h = torch.rand(30, 6, generator=torch.Generator().manual_seed(2), dtype=torch.float64).requires_grad_(True)
    weight = torch.randn(30, 6, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    with compile_mode_set(mode):
        (kernels.SEGMENT_MAX(c, h[c.src]) * weight).sum().backward()
    expected = torch.zeros_like(h)  # per node and column, the whole gradient to the one source at the maximum
    for v in range(30):
        sources = c.src[int(c.indptr[v]) : int(c.indptr[v + 1])]
        if len(sources):
            best = h.detach()[sources].argmax(0)  # random features: no two distinct sources tie
            expected[sources[best], torch.arange(6)] += weight[v]
    torch.testing.assert_close(h.grad, expected)


def test_a_second_job_of_other_sizes_compiles_nothing_new() -> None:
    """Compiled once per process (dynamic shapes): a worker's later jobs, on graphs of other sizes and
    widths, reuse the kernels the first one compiled. (Both widths exceed the 7 input features: GCN and
    GraphSAGE multiply before aggregating when a layer narrows, a path of its own to compile.)"""
    from torch._dynamo.utils import counters

    from alignahead import JobSpec
    from alignahead.datasets import load_dataset
    from alignahead.trainer import Trainer

    def job(nodes: int, width: int, schedule: str) -> None:
        spec = JobSpec.model_validate(
            {
                "dataset": {"name": "synthetic", "synthetic": {"num_nodes": nodes, "num_features": 7}},
                "students": [
                    {"arch": "gat", "hidden_layers": 2, "hidden_size": width, "heads": 2},
                    {"arch": "gcn", "hidden_layers": 2, "hidden_size": width},
                    {"arch": "sage", "hidden_layers": 2, "hidden_size": width, "aggregator": "pool"},
                ],
                "distillation": {"schedule": schedule, "tau": "auto"},
                "training": {"epochs": 2, "device": "cpu"},
            }
        )
        Trainer(spec, load_dataset(spec.dataset, seed=0)).run()

    with compile_mode_set("on"):
        for schedule in ("alternating", "simultaneous"):
            job(120, 8, schedule)
        compiled = counters["stats"]["unique_graphs"]
        for schedule in ("alternating", "simultaneous"):
            job(333, 11, schedule)
    assert compiled > 0 and counters["stats"]["unique_graphs"] == compiled
