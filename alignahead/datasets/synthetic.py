"""Seeded stochastic-block-model graphs: data that needs no download, for tests, examples and benchmarks."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import scipy.sparse as sp

from alignahead.datasets.dataset import MAX_BYTES, DatasetError, GraphDataset, Piece
from alignahead.datasets.preprocessing import (
    _DEFAULT_SPLIT,
    _inductive,
    _prepare,
    default_features,
    graph_split,
    simplify_edges,
)
from alignahead.spec import Features, SplitSpec, SyntheticSpec


def make_synthetic(
    spec: SyntheticSpec,
    *,
    seed: int,
    split: SplitSpec = _DEFAULT_SPLIT,
    max_bytes: int = MAX_BYTES,
    features: Features | None = None,
    largest_component: bool | None = None,
) -> GraphDataset:
    """Stochastic block model: each edge starts at a random node and stays in its class with probability
    `homophily`; features are unit Gaussian noise around class means of norm `feature_signal`.
    `num_nodes` is per graph; one numpy Generator(seed) draws everything, so a seed fixes the dataset.
    `features` and `largest_component` default to off (raw features, the whole graph)."""
    n, c, f, count = spec.num_nodes, spec.num_classes, spec.num_features, spec.num_graphs
    if c > n:
        raise DatasetError(f"synthetic: num_classes ({c}) exceeds num_nodes ({n}); lower num_classes")
    if count * n * (4 * f + 16 * spec.avg_degree) > max_bytes:
        raise DatasetError(
            f"synthetic: {count} graph(s) of {n} nodes, {f} features and degree {spec.avg_degree:g} would "
            f"exceed {max_bytes / 2**30:.1f} GiB; lower num_nodes, num_features, avg_degree or num_graphs"
        )
    rng = np.random.default_rng(seed)
    means = _class_means(spec, rng)
    pieces = [_sbm(n, c, spec.avg_degree, spec.homophily, means, rng) for _ in range(count)]
    if count == 1:
        src, dst, feat, labels = pieces[0]
        s, d = simplify_edges(src, dst, n)
        options = {"features": features, "largest_component": largest_component}
        return _prepare(
            "synthetic", s, d, feat, labels, None, kind="synthetic", split=split, rng=rng, clamp=True, **options
        )
    if largest_component:
        raise DatasetError("largest_component applies to a single graph; synthetic num_graphs is above 1")
    return _inductive("synthetic", pieces, graph_split(count, rng), c, features or default_features("synthetic"))


def _class_means(spec: SyntheticSpec, rng: np.random.Generator) -> np.ndarray:
    directions = rng.normal(size=(spec.num_classes, spec.num_features))
    return spec.feature_signal * directions / (np.linalg.norm(directions, axis=1, keepdims=True) + 1e-12)


@dataclass(frozen=True)
class ExampleNpz:
    """What `write_example_npz` wrote."""

    path: Path
    nodes: int
    edges: int  # stored (directed) entries of the adjacency, before symmetrisation on load
    features: int
    classes: int


def write_example_npz(path: str | Path, spec: SyntheticSpec | None = None, *, seed: int = 0) -> ExampleNpz:
    """One stochastic-block-model graph (as dataset 'synthetic' makes it) saved in the GNN-benchmark npz
    layout that uploads and dataset 'npz' read: CSR adjacency, dense `attr_matrix`, one label per node,
    no masks (so the per-class random split applies). For trying an upload without a graph of one's own."""
    spec = spec or SyntheticSpec()
    rng = np.random.default_rng(seed)
    src, dst, feat, labels = _sbm(spec.num_nodes, spec.num_classes, spec.avg_degree, spec.homophily,
                                  _class_means(spec, rng), rng)  # fmt: skip
    n = spec.num_nodes
    adj = sp.csr_matrix((np.ones(len(src), np.float32), (src, dst)), shape=(n, n))
    adj.sum_duplicates()
    adj.data[:] = 1.0
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as f:  # a file object: numpy would otherwise append .npz to other names
        np.savez_compressed(f, adj_data=adj.data, adj_indices=adj.indices, adj_indptr=adj.indptr,
                            adj_shape=np.array(adj.shape), attr_matrix=feat, labels=labels)  # fmt: skip
    return ExampleNpz(path, n, int(adj.nnz), spec.num_features, spec.num_classes)


def _sbm(n: int, c: int, avg_degree: float, homophily: float, means: np.ndarray, rng: np.random.Generator) -> Piece:
    labels = rng.permutation(np.arange(n) % c)  # balanced classes, none empty since c <= n
    order = np.argsort(labels, kind="stable")  # node ids grouped by class
    sizes = np.bincount(labels, minlength=c)
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    m = max(1, round(n * avg_degree / 2))  # undirected edges; symmetrised later
    src = rng.integers(0, n, m)
    cls = labels[src]
    inside = starts[cls] + (rng.random(m) * sizes[cls]).astype(np.int64)
    # a uniform position among the other classes' nodes: skip over the source's own block
    outside = (rng.random(m) * (n - sizes[cls])).astype(np.int64)
    outside = np.where(outside < starts[cls], outside, outside + sizes[cls])
    dst = order[np.where(rng.random(m) < homophily, inside, outside)]
    feat = (means[labels] + rng.normal(size=(n, means.shape[1]))).astype(np.float32)
    return src, dst, feat, labels.astype(np.int64)
