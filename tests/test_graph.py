"""The library's graph, and DGL at the edges: conversions, predict and prepare_graph taking either."""

from __future__ import annotations

import pytest
import torch
from graphs import needs_dgl, random_graph, ring

from alignahead import prepare_graph
from alignahead.graph import Graph, import_dgl
from alignahead.models import Student, StudentConfig


def test_edges_are_kept_sorted_by_destination_stably() -> None:
    g = Graph(torch.tensor([3, 0, 1, 2, 0]), torch.tensor([1, 2, 1, 0, 1]), 4)
    assert g.dst.tolist() == [0, 1, 1, 1, 2]
    assert g.src.tolist() == [2, 3, 1, 0, 0]  # into node 1: in the order given
    assert g.indptr.tolist() == [0, 1, 4, 5, 5] and g.in_degrees().tolist() == [1, 3, 1, 0]
    assert g.out_degrees().tolist() == [2, 1, 1, 1]


@pytest.mark.parametrize(
    ("src", "dst", "n", "message"),
    [([0, 1], [1], 2, "equal length"), ([0, 5], [1, 1], 3, r"\[0, num_nodes=3\)"), ([-1], [0], 2, "num_nodes")],
)
def test_bad_edges_are_refused(src: list[int], dst: list[int], n: int, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Graph(torch.tensor(src), torch.tensor(dst), n)


def test_a_batch_is_the_disjoint_union_and_keeps_each_graphs_sizes() -> None:
    a, b = random_graph(5, 12, seed=1), random_graph(7, 20, seed=2)
    a.ndata["feat"], b.ndata["feat"] = torch.zeros(5, 2), torch.ones(7, 2)
    batch = Graph.batch([a, b])
    assert (batch.num_nodes(), batch.num_edges()) == (12, a.num_edges() + b.num_edges())
    assert batch.batch_num_nodes() == [5, 7] and batch.batch_num_edges() == [a.num_edges(), b.num_edges()]
    assert torch.equal(batch.src, torch.cat([a.src, b.src + 5]))
    assert torch.equal(batch.dst, torch.cat([a.dst, b.dst + 5]))
    assert bool((batch.dst[1:] >= batch.dst[:-1]).all())  # still sorted by destination
    assert torch.equal(batch.ndata["feat"], torch.cat([a.ndata["feat"], b.ndata["feat"]]))
    nested = Graph.batch([batch, a])
    assert nested.batch_num_nodes() == [5, 7, 5]
    with pytest.raises(ValueError, match="same ndata keys"):
        Graph.batch([a, random_graph(3, 4, seed=3)])


def test_to_moves_edges_and_node_data_and_is_free_when_already_there() -> None:
    g = ring()
    g.ndata["feat"] = torch.randn(12, 3)
    assert g.to("cpu") is g
    moved = g.to(torch.device("meta"))
    assert moved.device.type == "meta" and moved.ndata["feat"].device.type == "meta"
    assert moved.num_nodes() == 12 and moved.num_edges() == g.num_edges()


def test_prepare_graph_symmetrises_deduplicates_and_adds_one_self_loop() -> None:
    g = Graph(torch.tensor([0, 0, 1, 2, 2]), torch.tensor([1, 1, 1, 3, 2]), 4)  # a repeat, two self-loops
    feat = torch.arange(8.0).view(4, 2).double()
    out = prepare_graph(g, feat)
    pairs = sorted(zip(out.src.tolist(), out.dst.tolist(), strict=True))
    assert pairs == [(0, 0), (0, 1), (1, 0), (1, 1), (2, 2), (2, 3), (3, 2), (3, 3)]
    assert out.ndata["feat"].dtype == torch.float32 and torch.equal(out.ndata["feat"], feat.float())
    with pytest.raises(ValueError, match="ndata\\['feat'\\]"):
        prepare_graph(g)
    with pytest.raises(ValueError, match="num_nodes=4"):
        prepare_graph(g, torch.zeros(3, 2))


@needs_dgl
def test_dgl_graphs_convert_both_ways_with_their_node_data_and_batches() -> None:
    dgl = import_dgl()
    g = random_graph(9, 30, seed=4)
    g.ndata["feat"] = torch.randn(9, 3)
    d = g.to_dgl()
    assert isinstance(d, dgl.DGLGraph)
    assert all(torch.equal(x, y) for x, y in zip(d.edges(), g.edges(), strict=True))  # the same edge order
    assert torch.equal(d.ndata["feat"], g.ndata["feat"])
    back = Graph.from_dgl(dgl.batch([d, d]))
    assert back.batch_num_nodes() == [9, 9] and back.num_edges() == 2 * g.num_edges()
    assert torch.equal(back.ndata["feat"], torch.cat([g.ndata["feat"]] * 2))


@needs_dgl
@pytest.mark.parametrize("arch", ["gat", "gcn", "sage"])
def test_predict_and_prepare_graph_take_a_dgl_graph_alike(arch: str) -> None:
    dgl = import_dgl()
    src, dst = torch.tensor([0, 1, 2, 3, 4, 0]), torch.tensor([1, 2, 3, 4, 0, 2])
    feat = torch.randn(5, 6)
    ours = prepare_graph(Graph(src, dst, 5), feat)
    theirs = prepare_graph(dgl.graph((src, dst), num_nodes=5), feat)
    assert isinstance(theirs, Graph) and torch.equal(theirs.src, ours.src) and torch.equal(theirs.dst, ours.dst)
    student = Student(StudentConfig(arch=arch, in_feats=6, num_classes=3, hidden_layers=2, hidden_size=4, heads=2))
    expected = student.predict(ours)
    assert torch.equal(student.predict(ours.to_dgl()), expected)  # a DGLGraph is converted on the way in
    assert torch.equal(student.predict(theirs), expected)


def test_predict_refuses_what_is_not_a_graph() -> None:
    student = Student(StudentConfig(arch="gcn", in_feats=2, num_classes=2, hidden_layers=1, hidden_size=2))
    with pytest.raises(TypeError, match="alignahead Graph or a dgl.DGLGraph"):
        student.predict({"edges": []})
