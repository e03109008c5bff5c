"""Our GAT, GCN and GraphSAGE layers against DGL's, the oracle, where DGL is installed.

Same seed, same parameters (names, shapes and values: the initialisation draws alike); then the same
forward values and the same gradients, for the input and every parameter, on random multigraphs with
nodes of no in-edges and on batches of them, compiled and eager. Attention dropout is off (DGL draws
its masks in another edge order).
"""

from __future__ import annotations

import pytest
import torch
from graphs import needs_dgl, random_graph

from alignahead.graph import Graph, import_dgl
from alignahead.kernels import compile_mode_set
from alignahead.layers import GATConv, GraphConv, SAGEConv

pytestmark = needs_dgl

# (name, ours, DGL's), each built from (in, out)
LAYERS = {
    "gat-3-heads": (
        lambda i, o: GATConv(i, o, 3),
        lambda dgl, i, o: dgl.nn.GATConv(i, o, 3, allow_zero_in_degree=True),
    ),
    "gat-elu": (
        lambda i, o: GATConv(i, o, 1, activation=torch.nn.functional.elu),
        lambda dgl, i, o: dgl.nn.GATConv(i, o, 1, activation=torch.nn.functional.elu, allow_zero_in_degree=True),
    ),
    "gcn": (lambda i, o: GraphConv(i, o), lambda dgl, i, o: dgl.nn.GraphConv(i, o, allow_zero_in_degree=True)),
    **{
        f"sage-{agg}": (
            lambda i, o, agg=agg: SAGEConv(i, o, agg),
            lambda dgl, i, o, agg=agg: dgl.nn.SAGEConv(i, o, agg),
        )
        for agg in ("mean", "gcn", "pool", "lstm")
    },
}
SIZES = [(6, 4), (4, 9)]  # narrowing (DGL multiplies before aggregating) and widening (after)


def graphs() -> dict[str, Graph]:
    one = random_graph(30, 120, seed=1, self_loops=False, isolated=4)  # repeated edges, 4 nodes without in-edges
    batch = Graph.batch([random_graph(n, 4 * n, seed=n, isolated=2) for n in (9, 17, 5)])
    return {"multigraph": one, "batch": batch}


def build(name: str, size: tuple[int, int], dtype: torch.dtype) -> tuple[torch.nn.Module, torch.nn.Module]:
    ours, theirs = LAYERS[name]
    dgl = import_dgl()
    torch.manual_seed(3)
    a = ours(*size)
    torch.manual_seed(3)
    b = theirs(dgl, *size)
    return a.to(dtype), b.to(dtype)


def forward_and_grads(layer: torch.nn.Module, graph: object, x: torch.Tensor) -> tuple[torch.Tensor, dict]:
    x = x.clone().requires_grad_(True)
    out = layer(graph, x)
    weight = torch.randn(out.shape, generator=torch.Generator().manual_seed(5), dtype=out.dtype)
    (out * weight).sum().backward()
    grads = {k: p.grad for k, p in layer.named_parameters()}
    return out.detach(), {"input": x.grad, **grads}


@pytest.mark.parametrize("name", sorted(LAYERS))
def test_same_seed_same_parameters(name: str) -> None:
    ours, theirs = build(name, SIZES[0], torch.float32)
    expected = {k: v for k, v in theirs.state_dict().items()}
    got = ours.state_dict()
    assert list(got) == list(expected)
    for key in expected:
        assert torch.equal(got[key], expected[key]), key


@pytest.mark.parametrize("name", sorted(LAYERS))
@pytest.mark.parametrize("which", ["multigraph", "batch"])
@pytest.mark.parametrize("size", SIZES, ids=["narrowing", "widening"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["float32", "float64"])
def test_forward_and_gradients_equal_dgls(name: str, which: str, size: tuple[int, int], dtype: torch.dtype) -> None:
    graph = graphs()[which]
    x = torch.randn(graph.num_nodes(), size[0], generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    x = x.to(dtype)
    ours, theirs = build(name, size, dtype)
    expected, expected_grads = forward_and_grads(theirs, graph.to_dgl(), x)
    got, grads = forward_and_grads(ours, graph, x)
    tol = {"rtol": 1e-5, "atol": 1e-5} if dtype == torch.float32 else {"rtol": 1e-10, "atol": 1e-12}
    torch.testing.assert_close(got, expected, **tol)
    assert list(grads) == list(expected_grads)
    for key in grads:
        torch.testing.assert_close(grads[key], expected_grads[key], **tol, msg=lambda m, key=key: f"{key}: {m}")


@pytest.mark.parametrize("name", ["gat-3-heads", "gcn", "sage-mean", "sage-pool"])
def test_compiled_layers_equal_dgls(name: str) -> None:
    graph = graphs()["batch"]
    x = torch.randn(graph.num_nodes(), 6, generator=torch.Generator().manual_seed(4))
    ours, theirs = build(name, (6, 4), torch.float32)
    expected, expected_grads = forward_and_grads(theirs, graph.to_dgl(), x)
    with compile_mode_set("on"):
        got, grads = forward_and_grads(ours, graph, x)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    for key in grads:
        torch.testing.assert_close(grads[key], expected_grads[key], rtol=1e-4, atol=1e-5)
