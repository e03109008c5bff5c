"""The library's graph: what the students, the local structure and the trainer run on.

A `Graph` holds N nodes and E directed edges u -> v, **sorted by destination** (stable: edges into
the same node keep the order they were given in), with the CSR row pointer over destinations built
once. That is what segment reductions over each node's in-edges need (a softmax over in-edges, a sum
of messages), and it is the only invariant the kernels in `alignahead.kernels` rely on.

Node data lives in `ndata` (a dict of [N, ...] tensors: 'feat', 'label', the masks). A batch of
graphs is their disjoint union (`Graph.batch`): nodes and edges of graph i follow those of graph
i - 1, so the batch is still sorted by destination, and it remembers each graph's node and edge
counts. The method names are DGL's (`num_nodes()`, `edges()`, `ndata`, `batch_num_edges()`), so
code written against a `DGLGraph` reads the same; `from_dgl` / `to_dgl` convert where DGL is
installed (imported there only).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from types import ModuleType
from typing import Any

import torch

DGL_MISSING = (
    "DGL is not installed here; it installs on Python 3.11 and older (pip install dgl), and alignahead trains "
    "and predicts without it"
)


def import_dgl() -> ModuleType:
    """DGL, imported on first use (only the edges of the library need it: conversions, downloads)."""
    os.environ.setdefault("DGLBACKEND", "pytorch")
    try:
        import dgl
    except ImportError as e:
        raise ImportError(f"{DGL_MISSING} ({e})") from e
    return dgl


class Graph:
    """N nodes, edges src -> dst sorted by dst, node data, and (for a batch) each part's sizes.

    src, dst: int64 [E]; indptr: int64 [N + 1], the in-edges of node v are indptr[v]:indptr[v + 1].
    Graphs are not mutated after construction (ndata may gain keys); derived structures that kernels
    need (the transpose, the unordered edge pairs, ...) are computed once per graph and kept.
    """

    def __init__(
        self,
        src: torch.Tensor,
        dst: torch.Tensor,
        num_nodes: int,
        ndata: dict[str, torch.Tensor] | None = None,
        *,
        batch_num_nodes: Sequence[int] | None = None,
        batch_num_edges: Sequence[int] | None = None,
        _trusted: bool = False,
    ) -> None:
        src, dst = torch.as_tensor(src, dtype=torch.int64), torch.as_tensor(dst, dtype=torch.int64)
        if not _trusted:  # checked and sorted here; internal copies and batches are valid and sorted already
            if src.dim() != 1 or src.shape != dst.shape:
                shapes = f"{list(src.shape)} and {list(dst.shape)}"
                raise ValueError(f"src and dst must be 1-D tensors of equal length, got {shapes}")
            ends = torch.cat([src, dst])
            if num_nodes < 0 or (ends.numel() and (int(ends.min()) < 0 or int(ends.max()) >= num_nodes)):
                raise ValueError(f"edge endpoints must lie in [0, num_nodes={num_nodes})")
            if dst.numel() > 1 and bool((dst[1:] < dst[:-1]).any()):
                order = torch.argsort(dst, stable=True)
                src, dst = src[order], dst[order]
        self.src, self.dst = src, dst
        self._num_nodes = int(num_nodes)
        counts = torch.bincount(dst, minlength=self._num_nodes)
        self.indptr = torch.zeros(self._num_nodes + 1, dtype=torch.int64, device=dst.device)
        torch.cumsum(counts, 0, out=self.indptr[1:])
        self.ndata: dict[str, torch.Tensor] = dict(ndata or {})
        self._batch_num_nodes = list(batch_num_nodes) if batch_num_nodes is not None else [self._num_nodes]
        self._batch_num_edges = list(batch_num_edges) if batch_num_edges is not None else [int(src.numel())]
        self._cache: dict[str, Any] = {}

    # --- DGL's names -------------------------------------------------------------------------------

    def num_nodes(self) -> int:
        return self._num_nodes

    def num_edges(self) -> int:
        return int(self.src.numel())

    def edges(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(src, dst), each [E], in the graph's edge order (sorted by dst)."""
        return self.src, self.dst

    def in_degrees(self) -> torch.Tensor:
        return self.indptr[1:] - self.indptr[:-1]

    def out_degrees(self) -> torch.Tensor:
        return torch.bincount(self.src, minlength=self._num_nodes)

    def batch_num_nodes(self) -> list[int]:
        return list(self._batch_num_nodes)

    def batch_num_edges(self) -> list[int]:
        return list(self._batch_num_edges)

    @property
    def batch_size(self) -> int:
        return len(self._batch_num_nodes)

    @property
    def device(self) -> torch.device:
        return self.dst.device

    def __repr__(self) -> str:
        keys = ", ".join(f"{k}: {list(v.shape)}" for k, v in self.ndata.items())
        parts = f", batch_size={self.batch_size}" if self.batch_size > 1 else ""
        return f"Graph(num_nodes={self._num_nodes}, num_edges={self.num_edges()}{parts}, ndata={{{keys}}})"

    # --- derived structures, computed once per graph ------------------------------------------------

    def cached(self, key: str, make: Callable[[Graph], Any]) -> Any:
        """`make(self)`, computed on first use and kept with the graph (graphs never change)."""
        if key not in self._cache:
            self._cache[key] = make(self)
        return self._cache[key]

    # --- moving and combining ----------------------------------------------------------------------

    def to(self, device: str | torch.device) -> Graph:
        """The same graph on `device` (itself if already there), node data included."""
        device = torch.device(device)
        if device == self.device and all(v.device == device for v in self.ndata.values()):
            return self
        moved = Graph.__new__(Graph)  # the same structure moved, nothing recomputed
        moved.src, moved.dst, moved.indptr = self.src.to(device), self.dst.to(device), self.indptr.to(device)
        moved._num_nodes = self._num_nodes
        moved.ndata = {k: v.to(device) for k, v in self.ndata.items()}
        moved._batch_num_nodes, moved._batch_num_edges = self._batch_num_nodes, self._batch_num_edges
        moved._cache = {}
        return moved

    @staticmethod
    def batch(graphs: Sequence[Graph]) -> Graph:
        """The disjoint union of `graphs`, in order: node ids of graph i shifted by the nodes before it.
        Every graph must hold the same ndata keys. Its edges are the graphs' edges concatenated."""
        if not graphs:
            raise ValueError("cannot batch an empty list of graphs")
        if len(graphs) == 1:
            return graphs[0]
        keys = set(graphs[0].ndata)
        if any(set(g.ndata) != keys for g in graphs):
            raise ValueError("graphs of a batch must hold the same ndata keys")
        offsets = torch.tensor([0, *(g.num_nodes() for g in graphs[:-1])], device=graphs[0].device).cumsum(0)
        src = torch.cat([g.src + off for g, off in zip(graphs, offsets, strict=True)])
        dst = torch.cat([g.dst + off for g, off in zip(graphs, offsets, strict=True)])
        return Graph(
            src,
            dst,
            sum(g.num_nodes() for g in graphs),
            {k: torch.cat([g.ndata[k] for g in graphs]) for k in graphs[0].ndata},
            batch_num_nodes=[n for g in graphs for n in g._batch_num_nodes],
            batch_num_edges=[e for g in graphs for e in g._batch_num_edges],
            _trusted=True,
        )

    # --- DGL at the edge ---------------------------------------------------------------------------

    @staticmethod
    def from_dgl(graph: Any) -> Graph:
        """A `Graph` of a homogeneous `DGLGraph` (edges re-ordered by destination; ndata kept, edge data
        dropped; a batched DGLGraph keeps its parts' sizes)."""
        src, dst = graph.edges()
        return Graph(
            src.cpu(),
            dst.cpu(),
            graph.num_nodes(),
            {k: v for k, v in graph.ndata.items()},
            batch_num_nodes=graph.batch_num_nodes().tolist(),
            batch_num_edges=graph.batch_num_edges().tolist(),
        ).to(graph.device)

    def to_dgl(self) -> Any:
        """This graph as a `DGLGraph` with the same edge order and ndata (needs DGL installed)."""
        dgl = import_dgl()
        g = dgl.graph((self.src, self.dst), num_nodes=self._num_nodes)
        for key, value in self.ndata.items():
            g.ndata[key] = value
        if self.batch_size > 1:
            g.set_batch_num_nodes(torch.tensor(self._batch_num_nodes, device=self.device))
            g.set_batch_num_edges(torch.tensor(self._batch_num_edges, device=self.device))
        return g


def as_graph(graph: Any) -> Graph:
    """`graph` itself, or a `Graph` of a `DGLGraph` (recognised without importing DGL)."""
    if isinstance(graph, Graph):
        return graph
    if type(graph).__module__.startswith("dgl"):
        return Graph.from_dgl(graph)
    raise TypeError(f"expected an alignahead Graph or a dgl.DGLGraph, got {type(graph).__name__}")
