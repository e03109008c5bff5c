"""The local-structure distribution, the KL loss and the layer pairing of each strategy."""

import dgl
import pytest
import torch

from alignahead.structure import distillation_loss, layer_pairs, local_structure, peer_targets, structure_kl


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
    loss = distillation_loss(g, student, [peer_targets(g, peer, pairs, 1.0)], pairs, 1.0)
    loss.backward()
    assert loss.item() > 0
    assert all(h.grad is not None and h.grad.abs().sum() > 0 for h in student)
    assert all(h.grad is None for h in peer)


def test_distillation_loss_averages_over_peers() -> None:
    g = small_graph()
    student = [torch.randn(3, 4)]
    peers = [[torch.randn(3, 4)], [torch.randn(3, 4)]]
    pairs = layer_pairs("one-to-one", 1)
    one = [distillation_loss(g, student, [peer_targets(g, p, pairs, 1.0)], pairs, 1.0) for p in peers]
    both = distillation_loss(g, student, [peer_targets(g, p, pairs, 1.0) for p in peers], pairs, 1.0)
    torch.testing.assert_close(both, (one[0] + one[1]) / 2)
