"""The hot paths of message passing and of the local structure, each written twice.

Every kernel has
- `plain`: the math in a few lines of PyTorch index ops (gather by source, `index_add_` or
  `scatter_reduce` by destination). This is what `torch.compile` turns into fused kernels (C++ on the
  CPU, Triton on CUDA), with dynamic shapes: one compilation serves every graph size and width.
- `eager`: what runs uncompiled. Where a plain gather would materialise a tensor per edge and feature,
  it uses the graph's CSR structure instead: sparse-dense products (`torch.sparse` CSR, MKL on the
  CPU, cuSPARSE on CUDA) and `torch.segment_reduce` over each node's in-edges.

Which one runs is `ALIGNAHEAD_COMPILE` (alignahead.runtime): `off` is always eager; `on` compiles every
kernel; `auto` (the default) compiles where that was measured to pay: every kernel on CUDA, on the CPU
only the edge distance (there the CSR kernels are as fast as inductor's scatter loops, which cost a
compilation besides: bench/README.md). A compiled kernel is checked against the eager one on a small
random multigraph with nodes of no in-edges, on first use per device type and dtype, forward values
and gradients; one that fails to compile or to agree is not used again in this process, and one log
line says so. Compilations are per process and shared by every job a worker runs.

Kernels take tensors only (and the graph's `Csr`, a tuple of tensors), never a `Graph`, so that a
compiled kernel is reused for every graph.
"""

from __future__ import annotations

import logging
import threading
import time
import warnings
from collections.abc import Callable
from contextlib import contextmanager
from typing import Any, NamedTuple

import torch

from alignahead.graph import Graph

log = logging.getLogger("alignahead.kernels")
# torch warns once per process that sparse CSR support is "in beta"; the products used here are tested
warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")

Compile = str  # 'auto' | 'on' | 'off'
COMPILE_MODES = ("auto", "on", "off")


class Csr(NamedTuple):
    """A graph's edges in both CSR orders, as the kernels take them. Edges are sorted by destination:
    node v's in-edges are indptr[v]:indptr[v + 1]. The transpose lists them by source:
    `t_perm` [E] edge ids sorted by source, `t_indptr` [N + 1], `t_dst` = dst[t_perm]."""

    src: torch.Tensor
    dst: torch.Tensor
    indptr: torch.Tensor
    lengths: torch.Tensor  # in-degrees [N]
    t_perm: torch.Tensor
    t_indptr: torch.Tensor
    t_dst: torch.Tensor


def csr(graph: Graph) -> Csr:
    """The graph's `Csr`, built once per graph."""

    def build(g: Graph) -> Csr:
        t_perm = torch.argsort(g.src, stable=True)
        t_indptr = torch.zeros_like(g.indptr)
        torch.cumsum(torch.bincount(g.src, minlength=g.num_nodes()), 0, out=t_indptr[1:])
        return Csr(g.src, g.dst, g.indptr, g.in_degrees(), t_perm, t_indptr, g.dst[t_perm])

    return graph.cached("csr", build)


def num_nodes(c: Csr) -> int:
    return c.indptr.numel() - 1


# --- the compile policy ----------------------------------------------------------------------------

_policy: list[Compile | None] = [None]  # None: read ALIGNAHEAD_COMPILE on first use
_lock = threading.Lock()


def compile_mode() -> Compile:
    """The process's compile policy: set by `set_compile_mode`, else ALIGNAHEAD_COMPILE (default auto)."""
    if _policy[0] is None:
        from alignahead.runtime import RuntimeSettings

        _policy[0] = RuntimeSettings().compile
    return _policy[0]


def set_compile_mode(mode: Compile | None) -> None:
    """'auto', 'on', 'off', or None to read the environment again."""
    if mode is not None and mode not in COMPILE_MODES:
        raise ValueError(f"compile mode must be one of {COMPILE_MODES}, got {mode!r}")
    _policy[0] = mode


@contextmanager
def compile_mode_set(mode: Compile):  # noqa: ANN201 - a context manager
    """Run a block under another compile policy (tests, benchmarks)."""
    before = _policy[0]
    set_compile_mode(mode)
    try:
        yield
    finally:
        _policy[0] = before


class Kernel:
    """One hot path: `plain` (compiled) and `eager`, same signature, same results; see the module's text.

    `example(device, dtype)` gives small inputs for the first-use check; `auto` lists the device types
    compiled under the policy 'auto'."""

    def __init__(
        self,
        name: str,
        plain: Callable[..., Any],
        eager: Callable[..., Any] | None = None,
        *,
        example: Callable[[torch.device, torch.dtype], tuple],
        auto: tuple[str, ...] = ("cuda",),
    ) -> None:
        self.name = name
        self.plain = plain
        self.eager = eager or plain
        self.example = example
        self.auto = auto
        self._compiled: Callable[..., Any] | None = None
        self._usable: dict[tuple[str, torch.dtype], bool] = {}
        self.compile_seconds = 0.0  # compiling and checking, for the benchmark

    def __call__(self, *args: Any) -> Any:
        first = next(a for a in args if isinstance(a, torch.Tensor) and a.is_floating_point())
        # kernels compute in their inputs' precision: autocast (training.precision) would put sums of
        # messages in bfloat16, and CSR products have no bfloat16 kernel on the CPU
        with torch.autocast(first.device.type, enabled=False):
            if self.compiled_for(first.device, first.dtype):
                assert self._compiled is not None
                return self._compiled(*args)
            return self.eager(*args)

    def compiled_for(self, device: torch.device, dtype: torch.dtype) -> bool:
        """Whether calls on this device type and dtype run compiled (checking it on first use)."""
        mode = compile_mode()
        if mode == "off" or (mode == "auto" and device.type not in self.auto):
            return False
        key = (device.type, dtype)
        if key not in self._usable:
            with _lock:
                if key not in self._usable:
                    t0 = time.perf_counter()
                    self._usable[key] = self._check(device, dtype)
                    self.compile_seconds += time.perf_counter() - t0
        return self._usable[key]

    def compiled_uses(self) -> list[str]:
        """The 'device/dtype' pairs this process runs compiled (those checked and passed so far)."""
        return [f"{device}/{str(dtype).removeprefix('torch.')}" for (device, dtype), ok in self._usable.items() if ok]

    def _check(self, device: torch.device, dtype: torch.dtype) -> bool:
        try:
            if self._compiled is None:
                import torch._inductor.config as inductor_config

                inductor_config.compile_threads = 1  # no compile-worker pool inside job worker processes
                self._compiled = torch.compile(self.plain, dynamic=True)
            args = self.example(device, dtype)
            with torch.no_grad():
                same = _close(self._compiled(*args), self.eager(*args), dtype)
            outs, grads = [], []
            for f in (self._compiled, self.eager):
                inputs = [a.detach().clone().requires_grad_(True) if _differentiable(a) else a for a in args]
                with torch.enable_grad():  # the first call may come from inside a no_grad block
                    out = f(*inputs)
                    weight = torch.randn(out.shape, generator=torch.Generator().manual_seed(1), dtype=out.dtype)
                    (out * weight.to(out.device)).sum().backward()
                outs.append(out.detach())
                grads.append([a.grad for a in inputs if _differentiable(a)])
            same = same and _close(outs[0], outs[1], dtype)
            same = same and all(_close(a, b, dtype) for a, b in zip(grads[0], grads[1], strict=True))
            if not same:
                log.warning("compiled %s disagrees with eager on %s/%s; using eager", self.name, device.type, dtype)
            return same
        except Exception as e:  # no compiler, an unsupported device: eager always works
            why = f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}"
            log.warning("compiled %s unavailable on %s/%s (%s); using eager", self.name, device.type, dtype, why)
            return False


def _differentiable(a: Any) -> bool:
    return isinstance(a, torch.Tensor) and a.is_floating_point() and a.dim() > 0


def _close(a: torch.Tensor, b: torch.Tensor, dtype: torch.dtype) -> bool:
    rtol, atol = {torch.float64: (1e-9, 1e-12), torch.float32: (1e-4, 1e-5)}.get(dtype, (2e-2, 2e-2))
    return a.shape == b.shape and torch.allclose(a.double(), b.double(), rtol=rtol, atol=atol)


def kernels() -> list[Kernel]:
    """Every kernel of the library, for reports (compile seconds) and tests."""
    return [SPMM, EDGE_SOFTMAX, GAT_ATTENTION, SEGMENT_SUM, SEGMENT_MAX, EDGE_L1, LOG_STRUCTURE, KL_SUM]


def compile_seconds() -> float:
    return sum(k.compile_seconds for k in kernels())


# --- the check's inputs: a multigraph with nodes of no in-edges ---------------------------------------


def example_csr(device: torch.device) -> Csr:
    gen = torch.Generator().manual_seed(0)
    n = 11
    src = torch.randint(0, n, (40,), generator=gen)
    dst = torch.randint(0, n - 3, (40,), generator=gen)  # the last three nodes have no in-edges
    src[1], dst[1] = src[0], dst[0]  # and one edge twice
    return csr(Graph(src, dst, n).to(device))


def _randn(*shape: int, device: torch.device, dtype: torch.dtype, seed: int) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64).to(device, dtype)


# --- sum of weighted messages: out[v] = sum over u -> v of w_e x[u] ---------------------------------------


def spmm_plain(c: Csr, w: torch.Tensor | None, x: torch.Tensor) -> torch.Tensor:
    """x [N, F] or [N, H, F]; w None, [E] or [E, H] -> [N, F] or [N, H, F]."""
    m = x[c.src]
    if w is not None:
        m = m * w.view(*w.shape, *([1] * (x.dim() - w.dim())))
    return torch.zeros_like(x).index_add_(0, c.dst, m)


class _CsrSpmm(torch.autograd.Function):
    """A = CSR(indptr, src, w) [N, N]; forward A @ x [N, F]; backward A^T @ g (the transpose's CSR) and,
    for w, the sampled product g x^T at A's entries. Nothing per edge and feature is ever held, and w
    and x are kept as given (views of a head are not copied for the backward)."""

    @staticmethod
    def forward(ctx: Any, c: Csr, w: torch.Tensor, x: torch.Tensor) -> torch.Tensor:  # noqa: ANN401
        ctx.c = c
        ctx.save_for_backward(w, x)
        n = num_nodes(c)
        return torch.sparse_csr_tensor(c.indptr, c.src, w.contiguous(), (n, n), check_invariants=False) @ x.contiguous()

    @staticmethod
    def backward(ctx: Any, g: torch.Tensor) -> tuple[None, torch.Tensor | None, torch.Tensor | None]:
        c: Csr = ctx.c
        w, x = ctx.saved_tensors
        n = num_nodes(c)
        gw = gx = None
        if ctx.needs_input_grad[2]:
            at = torch.sparse_csr_tensor(c.t_indptr, c.t_dst, w[c.t_perm], (n, n), check_invariants=False)
            gx = at @ g
        if ctx.needs_input_grad[1]:
            pattern = torch.sparse_csr_tensor(c.indptr, c.src, torch.zeros_like(w), (n, n), check_invariants=False)
            gw = torch.sparse.sampled_addmm(pattern, g.contiguous(), x.contiguous().t(), beta=0.0).values()
        return None, gw, gx


def spmm_eager(c: Csr, w: torch.Tensor | None, x: torch.Tensor) -> torch.Tensor:
    if w is None:
        w = torch.ones(c.src.numel(), dtype=x.dtype, device=x.device)
    if x.dim() == 2:
        return _CsrSpmm.apply(c, w.reshape(-1), x)
    heads = x.shape[1]
    ws = w.expand(-1, heads) if w.dim() == 2 else w[:, None].expand(-1, heads)
    return torch.stack([_CsrSpmm.apply(c, ws[:, h], x[:, h]) for h in range(heads)], 1)


SPMM = Kernel(
    "message sum",
    spmm_plain,
    spmm_eager,
    example=lambda dev, dt: (
        example_csr(dev),
        _randn(40, 2, device=dev, dtype=dt, seed=1),
        _randn(11, 2, 3, device=dev, dtype=dt, seed=2),
    ),
)


def spmm(c: Csr, w: torch.Tensor | None, x: torch.Tensor) -> torch.Tensor:
    """Per node, the sum over its in-edges u -> v of w_e * x[u]; x [N, (H,) F], w None, [E] or [E, H]."""
    return SPMM(c, w, x)


# --- segment reductions over each node's in-edges --------------------------------------------------------


def segment_sum_plain(c: Csr, v: torch.Tensor) -> torch.Tensor:
    """v [E, ...] -> [N, ...]: per node, the sum over its in-edges."""
    return torch.zeros((num_nodes(c), *v.shape[1:]), dtype=v.dtype, device=v.device).index_add_(0, c.dst, v)


def segment_sum_eager(c: Csr, v: torch.Tensor) -> torch.Tensor:
    return torch.segment_reduce(v, "sum", lengths=c.lengths, axis=0, unsafe=True)


SEGMENT_SUM = Kernel(
    "segment sum",
    segment_sum_plain,
    segment_sum_eager,
    example=lambda dev, dt: (example_csr(dev), _randn(40, 3, device=dev, dtype=dt, seed=3)),
)


def segment_max_plain(c: Csr, v: torch.Tensor) -> torch.Tensor:
    """v [E, F] -> [N, F]: per node, the maximum over its in-edges; 0 for a node without any."""
    out = torch.zeros((num_nodes(c), *v.shape[1:]), dtype=v.dtype, device=v.device)
    return out.scatter_reduce(0, c.dst.view(-1, *([1] * (v.dim() - 1))).expand_as(v), v, "amax", include_self=False)


class _SegmentMax(torch.autograd.Function):
    """Per node the maximum over its in-edges (0 without any); the gradient is shared evenly by the
    edges that reach the maximum, as `scatter_reduce`'s is. (torch.segment_reduce's own backward gave
    each of two tied edges the whole gradient in some cases, on torch 2.13: tests/test_kernels.py.)"""

    @staticmethod
    def forward(ctx: Any, c: Csr, v: torch.Tensor) -> torch.Tensor:  # noqa: ANN401
        out = torch.segment_reduce(v, "max", lengths=c.lengths, axis=0, unsafe=True)
        out = torch.where((c.lengths > 0).view(-1, *([1] * (v.dim() - 1))), out, torch.zeros_like(out))
        ctx.c = c
        ctx.save_for_backward(v, out)
        return out

    @staticmethod
    def backward(ctx: Any, g: torch.Tensor) -> tuple[None, torch.Tensor]:
        c: Csr = ctx.c
        v, out = ctx.saved_tensors
        top = (v == out[c.dst]).to(g.dtype)  # the edges at their node's maximum
        ties = torch.segment_reduce(top, "sum", lengths=c.lengths, axis=0, unsafe=True)
        return None, top * (g / ties.clamp(min=1))[c.dst]


def segment_max_eager(c: Csr, v: torch.Tensor) -> torch.Tensor:
    return _SegmentMax.apply(c, v)


SEGMENT_MAX = Kernel(
    "segment max",
    segment_max_plain,
    segment_max_eager,
    example=lambda dev, dt: (example_csr(dev), _randn(40, 3, device=dev, dtype=dt, seed=4)),
)


def _segment_amax(c: Csr, v: torch.Tensor, eager: bool) -> torch.Tensor:
    """Per node the largest value over its in-edges (no gradient: used to shift a softmax)."""
    v = v.detach()
    if eager:
        return torch.segment_reduce(v, "max", lengths=c.lengths, axis=0, unsafe=True)
    out = torch.full((num_nodes(c), *v.shape[1:]), float("-inf"), dtype=v.dtype, device=v.device)
    return out.scatter_reduce(0, c.dst.view(-1, *([1] * (v.dim() - 1))).expand_as(v), v, "amax")


def _edge_softmax(c: Csr, score: torch.Tensor, eager: bool) -> torch.Tensor:
    top = _segment_amax(c, score, eager)  # the softmax is the same for any shift; this one keeps exp <= 1
    x = torch.exp(score - top[c.dst])
    total = segment_sum_eager(c, x) if eager else segment_sum_plain(c, x)
    return x / total[c.dst]


def edge_softmax_plain(c: Csr, score: torch.Tensor) -> torch.Tensor:
    """score [E, ...] -> [E, ...]: per node, a softmax over its in-edges (DGL's edge_softmax)."""
    return _edge_softmax(c, score, eager=False)


class _EdgeSoftmax(torch.autograd.Function):
    """The softmax over in-edges, keeping only its output for the backward (DGL's edge_softmax does the
    same): d score = a * (g - sum over the node's in-edges of a * g). `leaky_slope`: the scores are
    leaky_relu(score) first (GAT), its sign kept as one byte per edge and head."""

    @staticmethod
    def forward(ctx: Any, c: Csr, score: torch.Tensor, leaky_slope: float | None) -> torch.Tensor:  # noqa: ANN401
        positive = None
        if leaky_slope is not None:
            positive = score > 0
            score = torch.where(positive, score, score * leaky_slope)
        a = _edge_softmax(c, score, eager=True)
        ctx.c, ctx.slope = c, leaky_slope
        ctx.save_for_backward(a, positive)
        return a

    @staticmethod
    def backward(ctx: Any, g: torch.Tensor) -> tuple[None, torch.Tensor, None]:
        a, positive = ctx.saved_tensors
        ag = a * g
        grad = ag - a * segment_sum_eager(ctx.c, ag)[ctx.c.dst]
        if positive is not None:
            grad = torch.where(positive, grad, grad * ctx.slope)
        return None, grad, None


def edge_softmax_eager(c: Csr, score: torch.Tensor) -> torch.Tensor:
    return _EdgeSoftmax.apply(c, score, None)


EDGE_SOFTMAX = Kernel(
    "edge softmax",
    edge_softmax_plain,
    edge_softmax_eager,
    example=lambda dev, dt: (example_csr(dev), _randn(40, 2, device=dev, dtype=dt, seed=5)),
)


def gat_attention_plain(c: Csr, el: torch.Tensor, er: torch.Tensor, slope: float) -> torch.Tensor:
    """GAT's attention [E, H]: softmax over in-edges u -> v of leaky_relu(el[u] + er[v]); el, er [N, H]."""
    return edge_softmax_plain(c, torch.nn.functional.leaky_relu(el[c.src] + er[c.dst], slope))


def gat_attention_eager(c: Csr, el: torch.Tensor, er: torch.Tensor, slope: float) -> torch.Tensor:
    return _EdgeSoftmax.apply(c, el[c.src] + er[c.dst], slope)


GAT_ATTENTION = Kernel(
    "GAT attention",
    gat_attention_plain,
    gat_attention_eager,
    example=lambda dev, dt: (
        example_csr(dev),
        _randn(11, 2, device=dev, dtype=dt, seed=6),
        _randn(11, 2, device=dev, dtype=dt, seed=7),
        0.2,
    ),
)


# --- the local structure ---------------------------------------------------------------------------------


def edge_l1_plain(h: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """||h[a] - h[b]||_1 per pair: h [N, H], a/b [P] -> [P]. Eager, it materialises [P, H] (and keeps it
    for the backward); compiled, it is one pass that never does."""
    return (h[a] - h[b]).abs().sum(-1)


class _EdgeL1(torch.autograd.Function):
    """`edge_l1_plain` in blocks of pairs, forward and backward: the [P, H] differences exist one block
    at a time and are never kept (the backward recomputes their signs), so memory is O(P) as compiled."""

    BLOCK = 2**21  # elements of a block of differences (8 MiB in float32)

    @staticmethod
    def forward(ctx: Any, h: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:  # noqa: ANN401
        ctx.save_for_backward(h, a, b)
        out = h.new_empty(a.shape[0])
        for lo, hi in _blocks(a.shape[0], h.shape[1]):
            out[lo:hi] = (h[a[lo:hi]] - h[b[lo:hi]]).abs_().sum(-1)
        return out

    @staticmethod
    def backward(ctx: Any, g: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        h, a, b = ctx.saved_tensors
        grad = torch.zeros_like(h)
        for lo, hi in _blocks(a.shape[0], h.shape[1]):
            part = (h[a[lo:hi]] - h[b[lo:hi]]).sign_().mul_(g[lo:hi, None])  # d|x| = sign(x), 0 at 0
            grad.index_add_(0, a[lo:hi], part)
            grad.index_add_(0, b[lo:hi], part, alpha=-1)
        return grad, None, None


def _blocks(pairs: int, width: int) -> list[tuple[int, int]]:
    step = max(1, _EdgeL1.BLOCK // max(width, 1))
    return [(lo, min(lo + step, pairs)) for lo in range(0, pairs, step)]


def edge_l1_eager(h: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return _EdgeL1.apply(h, a, b)


EDGE_L1 = Kernel(
    "edge L1 distance",
    edge_l1_plain,
    edge_l1_eager,
    example=lambda dev, dt: (
        _randn(9, 6, device=dev, dtype=dt, seed=8),
        torch.randint(0, 9, (23,), generator=torch.Generator().manual_seed(9)).to(dev),
        torch.randint(0, 9, (23,), generator=torch.Generator().manual_seed(10)).to(dev),
    ),
    auto=("cpu", "cuda"),
)


def _log_structure(c: Csr, distances: torch.Tensor, tau: torch.Tensor, eager: bool) -> torch.Tensor:
    score = torch.exp(-distances / tau)  # in (0, 1]: exp(score) cannot overflow
    z = segment_sum_eager(c, torch.exp(score)) if eager else segment_sum_plain(c, torch.exp(score))
    return score - torch.log(z)[c.dst]


def log_structure_plain(c: Csr, distances: torch.Tensor, tau: torch.Tensor) -> torch.Tensor:
    """Log-probabilities [E]: per node, log softmax over its in-edges of exp(-distance / tau).
    distances [E]; tau a 0-d tensor or one per edge [E] (a tensor, so that no value is compiled in)."""
    return _log_structure(c, distances, tau, eager=False)


def log_structure_eager(c: Csr, distances: torch.Tensor, tau: torch.Tensor) -> torch.Tensor:
    return _log_structure(c, distances, tau, eager=True)


LOG_STRUCTURE = Kernel(
    "local structure",
    log_structure_plain,
    log_structure_eager,
    example=lambda dev, dt: (
        example_csr(dev),
        _randn(40, device=dev, dtype=dt, seed=11).abs(),
        torch.tensor(0.7, dtype=dt, device=dev),
    ),
)


def kl_sum_plain(log_p: torch.Tensor, log_q: torch.Tensor) -> torch.Tensor:
    """sum over edges of p (log p - log q): KL(p || q) of every node's in-edge distribution, summed."""
    return (log_p.exp() * (log_p - log_q)).sum()


KL_SUM = Kernel(
    "structure KL",
    kl_sum_plain,
    example=lambda dev, dt: (
        torch.log_softmax(_randn(40, device=dev, dtype=dt, seed=12), 0),
        torch.log_softmax(_randn(40, device=dev, dtype=dt, seed=13), 0),
    ),
)
