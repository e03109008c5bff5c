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

Bandwidth = float | torch.Tensor  # one tau, or one per edge [E] (tau 'auto': per graph of a batch)


def edge_distances(graph: dgl.DGLGraph, h: torch.Tensor, fused: bool = True) -> torch.Tensor:
    """||h_u - h_v||_1 of every edge u -> v, [E], computed once per unordered pair; h is [N, H]."""
    pairs = edge_pairs(graph)
    return edge_l1(h, pairs.src, pairs.dst, fused)[pairs.index]


@torch.no_grad()
def auto_tau(graph: dgl.DGLGraph, distances: torch.Tensor) -> torch.Tensor:
    """tau 'auto', one per edge [E]: for each graph of a batch, the median of its edges' distances,
    self-loops (always 0) left out, so that the kernel separates edges whatever the feature scale.
    A graph whose distances are all 0 gets 1: every kernel value is then 1, whatever tau."""
    src, dst = graph.edges()
    counts = graph.batch_num_edges().tolist()
    taus = []
    for d, loop in zip(distances.detach().split(counts), (src == dst).split(counts), strict=True):
        d = d[~loop]
        median = d.median() if d.numel() else d.new_zeros(())
        taus.append(torch.where(median > 0, median, torch.ones_like(median)))
    return torch.repeat_interleave(torch.stack(taus), torch.tensor(counts, device=distances.device))


def kernel_structure(graph: dgl.DGLGraph, distances: torch.Tensor, tau: Bandwidth) -> torch.Tensor:
    """Log-probabilities [E] of each node's distribution over its incoming edges, from the edges'
    distances [E]: log softmax over in-edges of exp(-distance / tau)."""
    score = torch.exp(-distances / tau)  # in (0, 1]: no overflow below
    with graph.local_scope():
        graph.edata["w"] = torch.exp(score)
        graph.update_all(fn.copy_e("w", "w"), fn.sum("w", "z"))
        graph.ndata["log_z"] = torch.log(graph.ndata["z"])
        graph.edata["score"] = score
        graph.apply_edges(fn.e_sub_v("score", "log_z", "log_p"))
        return graph.edata["log_p"]


def local_structure(graph: dgl.DGLGraph, h: torch.Tensor, tau: Bandwidth | str, fused: bool = True) -> torch.Tensor:
    """Log-probabilities [E] of each node's distribution over its incoming edges; h is [N, H]."""
    d = edge_distances(graph, h, fused)
    return kernel_structure(graph, d, auto_tau(graph, d) if tau == "auto" else tau)


@dataclass(frozen=True)
class Target:
    """A peer layer's fixed distribution and the bandwidth it was computed with, which the student's
    distribution compared with it must use too."""

    log_p: torch.Tensor  # [E]
    tau: Bandwidth


def layer_distances(
    graph: dgl.DGLGraph, hidden: list[torch.Tensor], layers: list[int], fused: bool = True
) -> dict[int, torch.Tensor]:
    """Edge distances [E] of each listed hidden layer; differentiable if `hidden` is."""
    return {layer: edge_distances(graph, hidden[layer], fused) for layer in layers}


@torch.no_grad()
def targets_from(graph: dgl.DGLGraph, distances: dict[int, torch.Tensor], tau: float | str) -> dict[int, Target]:
    """Fixed targets {layer: Target} from a peer's edge distances (tau a number, or 'auto')."""
    out = {}
    for layer, d in distances.items():
        bandwidth = auto_tau(graph, d) if tau == "auto" else tau
        out[layer] = Target(kernel_structure(graph, d.detach(), bandwidth), bandwidth)
    return out


@torch.no_grad()
def peer_targets(
    graph: dgl.DGLGraph, hidden: list[torch.Tensor], pairs: list[tuple[int, int]], tau: float | str, fused: bool = True
) -> dict[int, Target]:
    """A peer's distributions for the layers that the pairs read, computed once and held fixed."""
    return targets_from(graph, layer_distances(graph, [h.detach() for h in hidden], peer_layers(pairs), fused), tau)


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


def distillation_loss(
    graph: dgl.DGLGraph,
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
