"""Local structure of a layer and the distillation loss between two students' layers.

The local structure of node v is a distribution over its incoming edges (u -> v):
    softmax_u( exp(-||h_u - h_v||_1 / tau) )
exactly as in the published code (a softmax *of* the kernel, so the weights stay within a factor e
of each other). The loss is KL(peer || student) summed over v's incoming edges, averaged over nodes.

The costly part is the per-edge L1 distance: written plainly, `(h[src] - h[dst]).abs().sum(1)`
materialises an [E, H] tensor that autograd keeps for the backward. Two things make it cheap:
- `edge_l1` computes it with a kernel that torch.compile (inductor) generates from that same
  expression, which never materialises it: O(E) memory and one pass, forward and backward. Where
  compilation is unavailable or fails its check, the plain expression is used.
- The distance of u -> v is that of v -> u (|a - b| = |b - a| exactly in floating point), and our
  graphs hold both directions of every edge: `EdgePairs` computes it once per unordered node pair and
  hands it to both edges, half the work forward and backward.
The rest is O(E) work on `dgl.function` builtins, stable from DGL 1.1 to 2.4.
"""

from __future__ import annotations

import logging
import time
import weakref
from dataclasses import dataclass

import dgl
import dgl.function as fn
import torch

from alignahead.spec import Strategy

log = logging.getLogger("alignahead.structure")


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


def edge_l1_plain(h: torch.Tensor, src: torch.Tensor, dst: torch.Tensor) -> torch.Tensor:
    """||h[src] - h[dst]||_1 per edge: h [N, H], src/dst [E] -> [E]. Materialises [E, H]."""
    return (h[src] - h[dst]).abs().sum(-1)


class FusedL1:
    """`edge_l1_plain` compiled once per process (dynamic shapes: one kernel serves every graph size and
    width), checked against the plain expression on a small random graph before first use on each
    device type and dtype, forward values and gradients. A variant that fails to compile or to agree
    is never used again in this process; the caller falls back to the plain expression."""

    def __init__(self) -> None:
        self._fn = None
        self._checked: dict[tuple[str, torch.dtype], bool] = {}
        self.compile_seconds = 0.0  # time spent compiling and checking, for the benchmark

    def usable(self, h: torch.Tensor) -> bool:
        key = (h.device.type, h.dtype)
        if key not in self._checked:
            t0 = time.perf_counter()
            self._checked[key] = self._check(h.device, h.dtype)
            self.compile_seconds += time.perf_counter() - t0
        return self._checked[key]

    def __call__(self, h: torch.Tensor, src: torch.Tensor, dst: torch.Tensor) -> torch.Tensor:
        assert self._fn is not None  # usable() came first
        return self._fn(h, src, dst)

    def _check(self, device: torch.device, dtype: torch.dtype) -> bool:
        try:
            if self._fn is None:
                import torch._inductor.config as inductor_config

                inductor_config.compile_threads = 1  # no compile-worker pool inside job worker processes
                self._fn = torch.compile(edge_l1_plain, dynamic=True)
            gen = torch.Generator().manual_seed(0)
            h = torch.randn(9, 6, generator=gen, dtype=dtype).to(device)
            src = torch.randint(0, 9, (23,), generator=gen).to(device)
            dst = torch.randint(0, 9, (23,), generator=gen).to(device)
            weight = torch.randn(23, generator=gen, dtype=dtype).to(device)
            with torch.no_grad():
                inference = self._fn(h, src, dst)
            grads = []
            for f in (self._fn, edge_l1_plain):
                x = h.clone().requires_grad_(True)
                with torch.enable_grad():  # the first call may come from inside a no_grad block
                    (f(x, src, dst) * weight).sum().backward()
                grads.append(x.grad)
            plain = edge_l1_plain(h, src, dst)
            ok = torch.allclose(inference, plain) and torch.allclose(grads[0], grads[1])
            if not ok:
                log.warning("fused edge distance disagrees with the plain one on %s/%s; using eager", device, dtype)
            return ok
        except Exception as e:  # no compiler, unsupported device: the plain expression always works
            why = f"{type(e).__name__}: {e}"
            log.warning("fused edge distance unavailable on %s/%s (%s); using eager", device, dtype, why)
            return False


fused_l1 = FusedL1()


@dataclass(frozen=True)
class EdgePairs:
    """A graph's edges grouped by unordered node pair {u, v}: `src`, `dst` [P] one (u, v) per pair, and
    `index` [E] the pair of each edge. On a graph holding both directions of its edges, P ~ E / 2."""

    src: torch.Tensor
    dst: torch.Tensor
    index: torch.Tensor

    @classmethod
    def of(cls, graph: dgl.DGLGraph) -> EdgePairs:
        src, dst = graph.edges()
        lo, hi = torch.minimum(src, dst), torch.maximum(src, dst)
        keys, index = torch.unique(lo * graph.num_nodes() + hi, return_inverse=True)
        return cls(keys // graph.num_nodes(), keys % graph.num_nodes(), index)


_pairs: weakref.WeakKeyDictionary[dgl.DGLGraph, EdgePairs] = weakref.WeakKeyDictionary()


def edge_pairs(graph: dgl.DGLGraph) -> EdgePairs:
    """`EdgePairs.of(graph)`, computed once per graph object (graphs are never mutated here)."""
    pairs = _pairs.get(graph)
    if pairs is None:
        pairs = _pairs[graph] = EdgePairs.of(graph)
    return pairs


def edge_l1(h: torch.Tensor, src: torch.Tensor, dst: torch.Tensor, fused: bool = True) -> torch.Tensor:
    """Per-edge L1 distance [E]; `fused` uses the compiled kernel where it passed its check."""
    if fused and fused_l1.usable(h):
        return fused_l1(h, src, dst)
    return edge_l1_plain(h, src, dst)


# --- distributions and the loss ------------------------------------------------------------------


def edge_distances(graph: dgl.DGLGraph, h: torch.Tensor, fused: bool = True) -> torch.Tensor:
    """||h_u - h_v||_1 of every edge u -> v, [E], computed once per unordered pair; h is [N, H]."""
    pairs = edge_pairs(graph)
    return edge_l1(h, pairs.src, pairs.dst, fused)[pairs.index]


def local_structure(graph: dgl.DGLGraph, h: torch.Tensor, tau: float, fused: bool = True) -> torch.Tensor:
    """Log-probabilities [E] of each node's distribution over its incoming edges; h is [N, H]."""
    score = torch.exp(-edge_distances(graph, h, fused) / tau)  # in (0, 1]: no overflow below
    with graph.local_scope():
        graph.edata["w"] = torch.exp(score)
        graph.update_all(fn.copy_e("w", "w"), fn.sum("w", "z"))
        graph.ndata["log_z"] = torch.log(graph.ndata["z"])
        graph.edata["score"] = score
        graph.apply_edges(fn.e_sub_v("score", "log_z", "log_p"))
        return graph.edata["log_p"]


def layer_structures(
    graph: dgl.DGLGraph, hidden: list[torch.Tensor], layers: list[int], tau: float, fused: bool = True
) -> dict[int, torch.Tensor]:
    """`local_structure` of each listed hidden layer, {layer: log_p [E]}; differentiable if `hidden` is."""
    return {layer: local_structure(graph, hidden[layer], tau, fused) for layer in layers}


def structure_kl(graph: dgl.DGLGraph, log_p_peer: torch.Tensor, log_q_student: torch.Tensor) -> torch.Tensor:
    """KL(peer || student) per node, summed over its incoming edges, averaged over nodes."""
    with graph.local_scope():
        graph.edata["kl"] = log_p_peer.exp() * (log_p_peer - log_q_student)
        graph.update_all(fn.copy_e("kl", "kl"), fn.sum("kl", "kl"))
        return graph.ndata["kl"].mean()


def student_layers(pairs: list[tuple[int, int]]) -> list[int]:
    """The student-side layers that the pairs read, in order."""
    return sorted({s for s, _ in pairs})


def peer_layers(pairs: list[tuple[int, int]]) -> list[int]:
    """The peer-side layers that the pairs read, in order."""
    return sorted({p for _, p in pairs})


@torch.no_grad()
def peer_targets(
    graph: dgl.DGLGraph, hidden: list[torch.Tensor], pairs: list[tuple[int, int]], tau: float, fused: bool = True
) -> dict[int, torch.Tensor]:
    """A peer's distributions for the layers that the pairs read, computed once and held fixed."""
    return layer_structures(graph, [h.detach() for h in hidden], peer_layers(pairs), tau, fused)


def distillation_loss(
    graph: dgl.DGLGraph,
    student: dict[int, torch.Tensor],
    peers: list[dict[int, torch.Tensor]],
    pairs: list[tuple[int, int]],
) -> torch.Tensor:
    """Sum over layer pairs of KL(peer layer || student layer), averaged over the peers.

    `student` holds the student's own distributions ({layer: log_q}, with gradient) for
    `student_layers(pairs)`, each computed once and reused for every peer; `peers` holds each peer's
    fixed distributions for `peer_layers(pairs)`.
    """
    if not pairs or not peers:
        return torch.zeros((), device=graph.device)
    total = None
    for targets in peers:
        for s_layer, p_layer in pairs:
            kl = structure_kl(graph, targets[p_layer], student[s_layer])
            total = kl if total is None else total + kl
    return total / len(peers)
