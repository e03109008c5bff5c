"""The local-structure distribution, the KL loss and the layer pairing of each strategy."""

import dgl
import pytest
import torch

from alignahead.structure import (
    distillation_loss,
    edge_l1,
    edge_l1_plain,
    fused_l1,
    layer_distances,
    layer_pairs,
    local_structure,
    peer_targets,
    structure_kl,
    student_layers,
)


def small_graph() -> dgl.DGLGraph:
    # 0->2, 1->2, 2->2 (self loop), 2->0, 0->0, 1->1
    return dgl.graph((torch.tensor([0, 1, 2, 2, 0, 1]), torch.tensor([2, 2, 2, 0, 0, 1])), num_nodes=3)


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


def random_graph(n: int, e: int, seed: int) -> dgl.DGLGraph:
    gen = torch.Generator().manual_seed(seed)
    return dgl.add_self_loop(
        dgl.graph((torch.randint(0, n, (e,), generator=gen), torch.randint(0, n, (e,), generator=gen)), num_nodes=n)
    )


def test_fused_edge_distance_is_available_here() -> None:
    # this machine has a C++ compiler: the fused path must really run, not silently fall back
    assert fused_l1.usable(torch.zeros(2, 2))
    assert fused_l1.usable(torch.zeros(2, 2, dtype=torch.float64))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_fused_edge_distance_equals_the_plain_one_on_random_graphs(seed: int) -> None:
    n, width = [(50, 7), (300, 33), (1000, 192)][seed]
    g = random_graph(n, 8 * n, seed)
    src, dst = g.edges()
    h = torch.randn(n, width, generator=torch.Generator().manual_seed(seed)) * 3
    weight = torch.randn(g.num_edges())
    grads, values = [], []
    for fused in (True, False):
        x = h.clone().requires_grad_(True)
        d = edge_l1(x, src, dst, fused)
        (d * weight).sum().backward()
        values.append(d.detach())
        grads.append(x.grad)
    assert torch.equal(grads[0], grads[1])  # sign(diff) scattered to both ends: exact either way
    # forward: the same sum of `width` terms in another order, so equal up to float32 rounding
    torch.testing.assert_close(values[0], values[1], rtol=1e-6, atol=1e-5 * width)


def test_fused_edge_distance_passes_gradcheck_in_float64() -> None:
    g = random_graph(12, 40, 3)
    src, dst = g.edges()
    # away from zero differences, where |x| has a kink and finite differences mean nothing
    h = (torch.randn(12, 5, dtype=torch.float64) * 4).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda x: edge_l1(x, src, dst, True), (h,))
    assert torch.autograd.gradcheck(lambda x: edge_l1_plain(x, src, dst), (h,))


def test_fused_local_structure_matches_the_plain_one() -> None:
    g = random_graph(200, 1500, 4)
    h = torch.randn(200, 24) * 5
    torch.testing.assert_close(local_structure(g, h, 30.0, fused=True), local_structure(g, h, 30.0, fused=False))


def test_fused_check_works_when_first_called_without_grad() -> None:
    from alignahead.structure import FusedL1

    fresh = FusedL1()
    with torch.no_grad():
        assert fresh.usable(torch.zeros(2, 2, dtype=torch.float64))


@pytest.mark.parametrize("symmetric", [True, False])
def test_edge_pairs_give_every_edge_its_own_distance(symmetric: bool) -> None:
    from alignahead.structure import EdgePairs, edge_distances

    g = random_graph(80, 400, 5)
    if symmetric:
        g = dgl.add_self_loop(dgl.to_bidirected(dgl.remove_self_loop(g)))
    pairs = EdgePairs.of(g)
    src, dst = g.edges()
    assert (pairs.src <= pairs.dst).all()
    # each edge maps to the pair of its two end nodes
    assert torch.equal(torch.minimum(src, dst), pairs.src[pairs.index])
    assert torch.equal(torch.maximum(src, dst), pairs.dst[pairs.index])
    if symmetric:  # both directions share one pair; self-loops have their own
        assert len(pairs.src) == (g.num_edges() - g.num_nodes()) // 2 + g.num_nodes()
    h = torch.randn(80, 16, dtype=torch.float64, requires_grad=True)
    for fused in (True, False):
        d = edge_distances(g, h, fused)
        assert torch.equal(d.detach(), edge_l1(h, src, dst, fused).detach())  # |a - b| = |b - a| exactly
        grad = torch.autograd.grad((d * torch.arange(len(d))).sum(), h)[0]
        plain = torch.autograd.grad((edge_l1_plain(h, src, dst) * torch.arange(len(d))).sum(), h)[0]
        torch.testing.assert_close(grad, plain, rtol=1e-12, atol=1e-9)


def test_auto_tau_is_the_median_of_each_graphs_own_distances() -> None:
    from alignahead.structure import auto_tau, edge_distances

    a, b = random_graph(30, 120, 6), random_graph(20, 80, 7)
    batch = dgl.batch([a, b])
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
