"""Local structure of a layer and the distillation loss between two students' layers.

The local structure of node v is a distribution over its incoming edges (u -> v):
    softmax_u( exp(-||h_u - h_v||_1 / tau) )
exactly as in the published code (a softmax *of* the kernel, so the weights stay within a factor e
of each other). The loss is KL(peer || student) summed over v's incoming edges, averaged over nodes.
Only `dgl.function` builtins are used, which are stable from DGL 1.1 to 2.4.
"""

from __future__ import annotations

import dgl
import dgl.function as fn
import torch

from alignahead.spec import Strategy


def layer_pairs(strategy: Strategy, num_layers: int) -> list[tuple[int, int]]:
    """(student layer, peer layer) pairs, 0-based over hidden layers.

    alignahead: student layer l+1 learns peer layer l, and student layer 0 learns the peer's last
    hidden layer, closing the cycle; one-to-one: layer l learns layer l; none: nothing.
    """
    if num_layers < 1:
        raise ValueError("a student needs at least one hidden layer")
    if strategy == "none":
        return []
    if strategy == "one-to-one":
        return [(layer, layer) for layer in range(num_layers)]
    if strategy == "alignahead":
        return [(layer + 1, layer) for layer in range(num_layers - 1)] + [(0, num_layers - 1)]
    raise ValueError(f"unknown strategy {strategy!r}")


def local_structure(graph: dgl.DGLGraph, h: torch.Tensor, tau: float) -> torch.Tensor:
    """Log-probabilities [E] of each node's distribution over its incoming edges."""
    with graph.local_scope():
        graph.ndata["h"] = h
        graph.apply_edges(fn.u_sub_v("h", "h", "diff"))
        score = torch.exp(-graph.edata["diff"].abs().sum(-1) / tau)  # in (0, 1]: no overflow below
        graph.edata["w"] = torch.exp(score)
        graph.update_all(fn.copy_e("w", "w"), fn.sum("w", "z"))
        graph.ndata["log_z"] = torch.log(graph.ndata["z"])
        graph.edata["score"] = score
        graph.apply_edges(fn.e_sub_v("score", "log_z", "log_p"))
        return graph.edata["log_p"]


def structure_kl(graph: dgl.DGLGraph, log_p_peer: torch.Tensor, log_q_student: torch.Tensor) -> torch.Tensor:
    """KL(peer || student) per node, summed over its incoming edges, averaged over nodes."""
    with graph.local_scope():
        graph.edata["kl"] = log_p_peer.exp() * (log_p_peer - log_q_student)
        graph.update_all(fn.copy_e("kl", "kl"), fn.sum("kl", "kl"))
        return graph.ndata["kl"].mean()


@torch.no_grad()
def peer_targets(
    graph: dgl.DGLGraph, hidden: list[torch.Tensor], pairs: list[tuple[int, int]], tau: float
) -> dict[int, torch.Tensor]:
    """A peer's distributions for the layers that the pairs read, computed once and held fixed."""
    return {p: local_structure(graph, hidden[p].detach(), tau) for p in sorted({p for _, p in pairs})}


def distillation_loss(
    graph: dgl.DGLGraph,
    student_hidden: list[torch.Tensor],
    peers: list[dict[int, torch.Tensor]],
    pairs: list[tuple[int, int]],
    tau: float,
) -> torch.Tensor:
    """Sum over layer pairs of KL(peer layer || student layer), averaged over the peers.

    `peers` holds each peer's `peer_targets`; each student layer's distribution is computed once
    and reused for every peer.
    """
    total = student_hidden[0].new_zeros(())
    if not pairs or not peers:
        return total
    log_q = {s: local_structure(graph, student_hidden[s], tau) for s in sorted({s for s, _ in pairs})}
    for targets in peers:
        for s_layer, p_layer in pairs:
            total = total + structure_kl(graph, targets[p_layer], log_q[s_layer])
    return total / len(peers)
