"""The local-structure distribution, the KL loss and the layer pairing of each strategy."""

import pytest
import torch
from graphs import random_graph, symmetric

from alignahead.graph import Graph
from alignahead.kernels import EDGE_L1, compile_mode_set, edge_l1_plain
from alignahead.structure import (
    distillation_loss,
    layer_distances,
    layer_pairs,
    local_structure,
    peer_targets,
    structure_kl,
    student_layers,
)


def small_graph() -> Graph:
    # 0->2, 1->2, 2->2 (self loop), 2->0, 0->0, 1->1
    return Graph(torch.tensor([0, 1, 2, 2, 0, 1]), torch.tensor([2, 2, 2, 0, 0, 1]), 3)


def test_layer_pairs_state_the_cycle() -> None:
    assert layer_pairs("alignahead", 4) == [(1, 0), (2, 1), (3, 2), (0, 3)]
    assert layer_pairs("one-to-one", 4) == [(0, 0), (1, 1), (2, 2), (3, 3)]
    assert layer_pairs("none", 4) == []
    assert layer_pairs("alignahead", 1) == [(0, 0)]
    assert layer_pairs("alignahead", 2) == [(1, 0), (0, 1)]
    with pytest.raises(ValueError):
        layer_pairs("alignahead", 0)


def test_local_structure_is_softmax_of_kernel_over_incoming_edges() -> None:
    g = small_graph()
    h = torch.tensor([[0.0, 1.0], [3.0, -2.0], [10.0, 4.0]])
    tau = 5.0
    log_p = local_structure(g, h, tau)
    src, dst = g.edges()
    kernel = torch.exp(-(h[src] - h[dst]).abs().sum(1) / tau)
    for v in range(3):
        into = dst == v
        expected = torch.softmax(kernel[into], 0)
        torch.testing.assert_close(log_p[into].exp(), expected)


def test_kl_is_zero_for_identical_features_and_positive_otherwise() -> None:
    g = small_graph()
    h = torch.randn(3, 4) * 5
    log_p = local_structure(g, h, 10.0)
    assert structure_kl(g, log_p, log_p).item() == 0.0
    other = local_structure(g, torch.randn(3, 4) * 5, 10.0)
    assert structure_kl(g, log_p, other).item() > 0.0


def test_kl_matches_hand_computation() -> None:
    g = small_graph()
    p_feat, q_feat = torch.randn(3, 2) * 100, torch.randn(3, 2) * 100
    log_p, log_q = local_structure(g, p_feat, 100.0), local_structure(g, q_feat, 100.0)
    _, dst = g.edges()
    per_node = torch.zeros(3)
    per_node.index_add_(0, dst, log_p.exp() * (log_p - log_q))
    torch.testing.assert_close(structure_kl(g, log_p, log_q), per_node.mean())


def test_distillation_loss_holds_the_peer_fixed() -> None:
    g = small_graph()
    student = [torch.randn(3, 4, requires_grad=True), torch.randn(3, 4, requires_grad=True)]
    peer = [torch.randn(3, 4, requires_grad=True), torch.randn(3, 4, requires_grad=True)]
    pairs = layer_pairs("alignahead", 2)
    own = layer_distances(g, student, student_layers(pairs))
    loss = distillation_loss(g, own, [peer_targets(g, peer, pairs, 1.0)], pairs)
    loss.backward()
    assert loss.item() > 0
    assert all(h.grad is not None and h.grad.abs().sum() > 0 for h in student)
    assert all(h.grad is None for h in peer)


def test_distillation_loss_averages_over_peers() -> None:
    g = small_graph()
    student = [torch.randn(3, 4)]
    peers = [[torch.randn(3, 4)], [torch.randn(3, 4)]]
    pairs = layer_pairs("one-to-one", 1)
    own = layer_distances(g, student, [0])
    one = [distillation_loss(g, own, [peer_targets(g, p, pairs, 1.0)], pairs) for p in peers]
    both = distillation_loss(g, own, [peer_targets(g, p, pairs, 1.0) for p in peers], pairs)
    torch.testing.assert_close(both, (one[0] + one[1]) / 2)


@pytest.mark.parametrize("mode", ["off", "on"])
def test_local_structure_is_the_same_compiled_and_eager_in_float64(mode: str) -> None:
    g = random_graph(200, 1500, 4)
    h = torch.randn(200, 24, dtype=torch.float64) * 5
    with compile_mode_set("off"):
        expected = local_structure(g, h, 30.0)
    with compile_mode_set(mode):
        torch.testing.assert_close(local_structure(g, h, 30.0), expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("both_ways", [True, False])
def test_edge_pairs_give_every_edge_its_own_distance(both_ways: bool) -> None:
    from alignahead.structure import EdgePairs, edge_distances

    g = random_graph(80, 400, 5)
    if both_ways:
        g = symmetric(g)
    pairs = EdgePairs.of(g)
    src, dst = g.edges()
    assert (pairs.src <= pairs.dst).all()
    # each edge maps to the pair of its two end nodes
    assert torch.equal(torch.minimum(src, dst), pairs.src[pairs.index])
    assert torch.equal(torch.maximum(src, dst), pairs.dst[pairs.index])
    if both_ways:  # both directions share one pair; self-loops have their own
        assert len(pairs.src) == (g.num_edges() - g.num_nodes()) // 2 + g.num_nodes()
    h = torch.randn(80, 16, dtype=torch.float64, requires_grad=True)
    for mode in ("on", "off"):
        with compile_mode_set(mode):
            d = edge_distances(g, h)
            assert torch.equal(d.detach(), EDGE_L1(h, src, dst).detach())  # |a - b| = |b - a| exactly
        grad = torch.autograd.grad((d * torch.arange(len(d))).sum(), h)[0]
        plain = torch.autograd.grad((edge_l1_plain(h, src, dst) * torch.arange(len(d))).sum(), h)[0]
        torch.testing.assert_close(grad, plain, rtol=1e-12, atol=1e-9)


def test_auto_tau_is_the_median_of_each_graphs_own_distances() -> None:
    from alignahead.structure import auto_tau, edge_distances

    a, b = random_graph(30, 120, 6), random_graph(20, 80, 7)
    batch = Graph.batch([a, b])
    h = torch.cat([torch.randn(30, 8), 1000 * torch.randn(20, 8)])  # two graphs, scales 1000x apart
    d = edge_distances(batch, h)
    tau = auto_tau(batch, d)
    src, dst = batch.edges()
    for part, (lo, hi) in enumerate([(0, a.num_edges()), (a.num_edges(), batch.num_edges())]):
        own = d[lo:hi][(src != dst)[lo:hi]]
        assert torch.all(tau[lo:hi] == own.median()), part


@pytest.mark.parametrize("scale", [1e-4, 1.0, 1e4])
def test_auto_tau_makes_the_distribution_independent_of_the_feature_scale(scale: float) -> None:
    g = random_graph(100, 600, 8)
    h = torch.randn(100, 16, dtype=torch.float64)
    torch.testing.assert_close(local_structure(g, h * scale, "auto"), local_structure(g, h, "auto"))
    # a fixed tau far from the distances flattens every node's distribution: nothing left to distil
    peer, student = local_structure(g, h * scale, 100.0), local_structure(g, torch.randn_like(h) * scale, 100.0)
    auto_peer, auto_student = (
        local_structure(g, h * scale, "auto"),
        local_structure(g, torch.randn_like(h) * scale, "auto"),
    )
    if scale == 1e-4:
        assert structure_kl(g, peer, student).item() < 1e-10
    assert structure_kl(g, auto_peer, auto_student).item() > 1e-3
