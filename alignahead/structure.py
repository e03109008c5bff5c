"""Local structure of a layer and the distillation loss between two students' layers.

The local structure of node v is a distribution over its incoming edges (u -> v):
    softmax_u( exp(-||h_u - h_v||_1 / tau) )
exactly as in the published code (a softmax *of* the kernel, so the weights stay within a factor e
of each other). The loss is KL(peer || student) summed over v's incoming edges, averaged over nodes.

The costly part is the per-edge L1 distance: written plainly, `(h[src] - h[dst]).abs().sum(1)`
materialises an [E, H] tensor that autograd keeps for the backward. Two things make it cheap:
- the distance is a kernel of `alignahead.kernels` that torch.compile turns into one pass that never
  materialises it (O(E) memory, forward and backward), compiled on every device by default;
- the distance of u -> v is that of v -> u (|a - b| = |b - a| exactly in floating point), and our
  graphs hold both directions of every edge: `EdgePairs` computes it once per unordered node pair and
  hands it to both edges, half the work forward and backward.
The softmax over in-edges and the KL are kernels too (segment sums over the graph's CSR).
Everything here is computed in float32 or wider, whatever precision the students run in.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from alignahead import kernels
from alignahead.graph import Graph
from alignahead.precision import widen
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


# --- the edge distance ---------------------------------------------------------------------------


@dataclass(frozen=True)
class EdgePairs:
    """A graph's edges grouped by unordered node pair {u, v}: `src`, `dst` [P] one (u, v) per pair, and
    `index` [E] the pair of each edge. On a graph holding both directions of its edges, P ~ E / 2."""

    src: torch.Tensor
    dst: torch.Tensor
    index: torch.Tensor

    @classmethod
    def of(cls, graph: Graph) -> EdgePairs:
        src, dst = graph.edges()
        n = graph.num_nodes()
        lo, hi = torch.minimum(src, dst), torch.maximum(src, dst)
        keys, index = torch.unique(lo * n + hi, return_inverse=True)
        return cls(keys // n, keys % n, index)


def edge_pairs(graph: Graph) -> EdgePairs:
    """`EdgePairs.of(graph)`, computed once per graph."""
    return graph.cached("edge-pairs", EdgePairs.of)


# --- distributions and the loss ------------------------------------------------------------------

Bandwidth = float | torch.Tensor  # one tau, or one per edge [E] (tau 'auto': per graph of a batch)


def edge_distances(graph: Graph, h: torch.Tensor) -> torch.Tensor:
    """||h_u - h_v||_1 of every edge u -> v, [E], computed once per unordered pair; h is [N, H]."""
    pairs = edge_pairs(graph)
    return kernels.EDGE_L1(widen(h), pairs.src, pairs.dst)[pairs.index]


@torch.no_grad()
def auto_tau(graph: Graph, distances: torch.Tensor) -> torch.Tensor:
    """tau 'auto', one per edge [E]: for each graph of a batch, the median of its edges' distances,
    self-loops (always 0) left out, so that the kernel separates edges whatever the feature scale.
    A graph whose distances are all 0 gets 1: every kernel value is then 1, whatever tau."""
    src, dst = graph.edges()
    counts = graph.batch_num_edges()
    taus = []
    for d, loop in zip(distances.detach().split(counts), (src == dst).split(counts), strict=True):
        d = d[~loop]
        median = d.median() if d.numel() else d.new_zeros(())
        taus.append(torch.where(median > 0, median, torch.ones_like(median)))
    return torch.repeat_interleave(torch.stack(taus), torch.tensor(counts, device=distances.device))


def kernel_structure(graph: Graph, distances: torch.Tensor, tau: Bandwidth) -> torch.Tensor:
    """Log-probabilities [E] of each node's distribution over its incoming edges, from the edges'
    distances [E]: log softmax over in-edges of exp(-distance / tau)."""
    bandwidth = torch.as_tensor(tau, dtype=distances.dtype, device=distances.device)
    return kernels.LOG_STRUCTURE(kernels.csr(graph), distances, bandwidth)


def local_structure(graph: Graph, h: torch.Tensor, tau: Bandwidth | str) -> torch.Tensor:
    """Log-probabilities [E] of each node's distribution over its incoming edges; h is [N, H]."""
    d = edge_distances(graph, h)
    return kernel_structure(graph, d, auto_tau(graph, d) if tau == "auto" else tau)


@dataclass(frozen=True)
class Target:
    """A peer layer's fixed distribution and the bandwidth it was computed with, which the student's
    distribution compared with it must use too."""

    log_p: torch.Tensor  # [E]
    tau: Bandwidth


def layer_distances(graph: Graph, hidden: list[torch.Tensor], layers: list[int]) -> dict[int, torch.Tensor]:
    """Edge distances [E] of each listed hidden layer; differentiable if `hidden` is."""
    return {layer: edge_distances(graph, hidden[layer]) for layer in layers}


@torch.no_grad()
def targets_from(graph: Graph, distances: dict[int, torch.Tensor], tau: float | str) -> dict[int, Target]:
    """Fixed targets {layer: Target} from a peer's edge distances (tau a number, or 'auto')."""
    out = {}
    for layer, d in distances.items():
        bandwidth = auto_tau(graph, d) if tau == "auto" else tau
        out[layer] = Target(kernel_structure(graph, d.detach(), bandwidth), bandwidth)
    return out


@torch.no_grad()
def peer_targets(
    graph: Graph, hidden: list[torch.Tensor], pairs: list[tuple[int, int]], tau: float | str
) -> dict[int, Target]:
    """A peer's distributions for the layers that the pairs read, computed once and held fixed."""
    return targets_from(graph, layer_distances(graph, [h.detach() for h in hidden], peer_layers(pairs)), tau)


def concat_targets(parts: list[dict[int, Target]]) -> dict[int, Target]:
    """The targets of a batch from those of its graphs, in batch order (edges of a batch are its
    graphs' edges, concatenated)."""
    if len(parts) == 1:
        return parts[0]
    out = {}
    for layer, first in parts[0].items():
        log_p = torch.cat([p[layer].log_p for p in parts])
        tau = torch.cat([p[layer].tau for p in parts]) if isinstance(first.tau, torch.Tensor) else first.tau
        out[layer] = Target(log_p, tau)
    return out


def structure_kl(graph: Graph, log_p_peer: torch.Tensor, log_q_student: torch.Tensor) -> torch.Tensor:
    """KL(peer || student) per node, summed over its incoming edges, averaged over nodes (every edge
    counts once for its destination, so that is the sum over edges divided by the nodes)."""
    return kernels.KL_SUM(log_p_peer, log_q_student) / graph.num_nodes()


def student_layers(pairs: list[tuple[int, int]]) -> list[int]:
    """The student-side layers that the pairs read, in order."""
    return sorted({s for s, _ in pairs})


def peer_layers(pairs: list[tuple[int, int]]) -> list[int]:
    """The peer-side layers that the pairs read, in order."""
    return sorted({p for _, p in pairs})


def distillation_loss(
    graph: Graph,
    distances: dict[int, torch.Tensor],
    peers: list[dict[int, Target]],
    pairs: list[tuple[int, int]],
    computed: dict[int, torch.Tensor] | None = None,
) -> torch.Tensor:
    """Sum over layer pairs of KL(peer layer || student layer), averaged over the peers.

    `distances`: the student's own edge distances (with gradient) for `student_layers(pairs)`. Its
    distribution of a layer is computed once per bandwidth and reused for every peer that shares it
    (a fixed tau: once per layer); `computed` may hold some already, {layer: log_q} at the peers' fixed
    tau. `peers`: each peer's fixed targets for `peer_layers(pairs)`.
    """
    if not pairs or not peers:
        return torch.zeros((), device=graph.device)
    log_q: dict[tuple[int, float | int], torch.Tensor] = {}
    total = None
    for targets in peers:
        for s_layer, p_layer in pairs:
            target = targets[p_layer]
            fixed = not isinstance(target.tau, torch.Tensor)
            key = (s_layer, target.tau if fixed else id(target.tau))
            if key not in log_q:
                if fixed and computed is not None and s_layer in computed:
                    log_q[key] = computed[s_layer]
                else:
                    log_q[key] = kernel_structure(graph, distances[s_layer], target.tau)
            kl = structure_kl(graph, target.log_p, log_q[key])
            total = kl if total is None else total + kl
    return total / len(peers)
