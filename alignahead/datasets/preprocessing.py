"""What loading does to every graph: symmetric edges with one self-loop per node, the split, the largest
component, small classes, row-normalised features (the rules are listed in alignahead.datasets)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import scipy.sparse as sp
import torch

from alignahead.datasets.dataset import MASK_KEYS, DatasetError, GraphDataset, Masks, Piece
from alignahead.graph import Graph
from alignahead.spec import Features, SplitSpec

_DEFAULT_SPLIT = SplitSpec()  # frozen, so safe as a default argument

# Datasets whose features are bag-of-words counts or 0/1 indicators: Kipf & Welling (GCN) and Velickovic et al.
# (GAT) divide each row by its sum (DGL ships the Planetoid graphs that way already, so it is idempotent
# there). PPI's features (gene sets and positional values) and the synthetic Gaussian features have
# signs and scale that carry signal; they stay raw.
_ROW_NORMALIZED = frozenset(
    {
        "cora",
        "citeseer",
        "pubmed",
        "coauthor-cs",
        "coauthor-physics",
        "amazon-computers",
        "amazon-photo",
        "npz",
        "upload",
    }
)
# Shchur et al. evaluate the GNN-benchmark graphs on their largest connected component. The Planetoid
# public splits are defined on the whole graph, so those stay whole; generated graphs stay as generated.
_LARGEST_COMPONENT = frozenset({"coauthor-cs", "coauthor-physics", "amazon-computers", "amazon-photo", "npz", "upload"})


def default_features(name: str) -> Features:
    """`dataset.features` when unset: 'row-normalized' for bag-of-words graphs, else 'raw'."""
    return "row-normalized" if name in _ROW_NORMALIZED else "raw"


def default_largest_component(name: str, *, has_masks: bool, num_graphs: int = 1) -> bool:
    """`dataset.largest_component` when unset: on for the GNN-benchmark graphs (Shchur et al.) drawn by a
    random split; off when the source fixes its own split (masks), for several graphs, and for the rest."""
    return name in _LARGEST_COMPONENT and not has_masks and num_graphs == 1


def simplify_edges(src: np.ndarray, dst: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric, duplicate-free edges without self-loops (those are added back exactly once later)."""
    s = np.concatenate([src, dst]).astype(np.int64)
    d = np.concatenate([dst, src]).astype(np.int64)
    keep = s != d
    key = np.unique(s[keep] * n + d[keep])
    return key // n, key % n


def _graph(src: np.ndarray, dst: np.ndarray, feat: np.ndarray, labels: np.ndarray, masks: Masks) -> Graph:
    """The training graph: simplified edges (sorted by source) then one self-loop per node, which the
    Graph orders by destination, stably: a node's in-edges by source id, its self-loop last."""
    n = feat.shape[0]
    s, d = simplify_edges(src, dst, n)
    loops = np.arange(n, dtype=np.int64)
    label_dtype = np.float32 if labels.ndim == 2 else np.int64
    ndata = {
        "feat": torch.from_numpy(np.ascontiguousarray(feat, dtype=np.float32)),
        "label": torch.from_numpy(np.ascontiguousarray(labels, dtype=label_dtype)),
    }
    for key, mask in zip(MASK_KEYS, masks, strict=True):
        ndata[key] = torch.from_numpy(np.ascontiguousarray(mask, dtype=bool))
    return Graph(torch.from_numpy(np.concatenate([s, loops])), torch.from_numpy(np.concatenate([d, loops])), n, ndata)


def _labelled(labels: np.ndarray) -> np.ndarray:
    return np.ones(len(labels), bool) if labels.ndim == 2 else labels >= 0


def per_class_split(
    labels: np.ndarray,
    train_per_class: int,
    val_per_class: int,
    rng: np.random.Generator,
    *,
    clamp: bool = False,
) -> Masks:
    """Shchur et al.'s split. `clamp` (synthetic graphs) shrinks the counts so that small classes still
    keep a third of their nodes for test: train = max(1, min(train_per_class, n_c // 3)),
    val = min(val_per_class, n_c // 3)."""
    n = len(labels)
    train, val, test = np.zeros(n, bool), np.zeros(n, bool), np.zeros(n, bool)
    if labels.ndim == 2:  # multilabel: no classes to stratify by
        t, v = train_per_class * labels.shape[1], val_per_class * labels.shape[1]
        if n <= t + v:
            raise DatasetError(
                f"the split needs (train_per_class + val_per_class) * {labels.shape[1]} labels = {t + v} "
                f"nodes plus test nodes, but the graph has {n}; lower split.train_per_class/val_per_class "
                "or give train_mask/val_mask/test_mask in the file"
            )
        order = rng.permutation(n)
        train[order[:t]], val[order[t : t + v]], test[order[t + v :]] = True, True, True
        return train, val, test
    for c in range(int(labels.max()) + 1):
        nodes = rng.permutation(np.flatnonzero(labels == c))
        t, v = train_per_class, val_per_class
        if clamp:
            t, v = max(1, min(t, len(nodes) // 3)), min(v, len(nodes) // 3)
        elif len(nodes) <= t + v:
            raise DatasetError(
                f"class {c} has only {len(nodes)} labelled nodes, but the split takes train_per_class + "
                f"val_per_class = {t + v} per class and needs one more for test; lower "
                "split.train_per_class/val_per_class, set split.small_classes to 'drop' (remove such "
                "classes, as Shchur et al. do) or give train_mask/val_mask/test_mask in the file"
            )
        train[nodes[:t]], val[nodes[t : t + v]], test[nodes[t + v :]] = True, True, True
    if not test.any():
        raise DatasetError("the split leaves no test nodes; lower split.train_per_class/val_per_class")
    return train, val, test


def graph_split(num_graphs: int, rng: np.random.Generator) -> np.ndarray:
    """Split index (0 train, 1 val, 2 test) per graph: ~15 % val, ~15 % test, at least one graph each."""
    if num_graphs < 3:
        raise DatasetError(
            f"{num_graphs} graphs cannot fill train, val and test; use one graph (transductive), "
            "three or more, or give train_mask/val_mask/test_mask"
        )
    n_val = n_test = max(1, round(0.15 * num_graphs))
    which = np.repeat([0, 1, 2], [num_graphs - n_val - n_test, n_val, n_test])
    return which[rng.permutation(num_graphs)]


def row_normalize(feat: np.ndarray | sp.spmatrix) -> np.ndarray | sp.csr_matrix:
    """Each row divided by the sum of its absolute values (for bag-of-words: by its sum), in float64 and
    back to float32; all-zero rows (e.g. CiteSeer's nodes without text) stay zero instead of NaN."""
    if sp.issparse(feat):
        feat = sp.csr_matrix(feat, dtype=np.float64)
        sums = np.asarray(abs(feat).sum(1)).ravel()
    else:
        feat = np.asarray(feat, dtype=np.float64)
        sums = np.abs(feat).sum(1)
    inv = np.divide(1.0, sums, out=np.zeros_like(sums), where=sums > 0)
    if sp.issparse(feat):
        return (sp.diags(inv) @ feat).tocsr().astype(np.float32)
    return (feat * inv[:, None]).astype(np.float32)


def largest_component(src: np.ndarray, dst: np.ndarray, n: int) -> np.ndarray:
    """Sorted ids of the nodes in the largest connected component (ties: the one with the smallest node)."""
    adj = sp.csr_matrix((np.ones(len(src), np.int8), (src, dst)), shape=(n, n))
    _, comp = sp.csgraph.connected_components(adj, directed=False)
    return np.flatnonzero(comp == np.bincount(comp).argmax())


def _small_classes(labels: np.ndarray, split: SplitSpec) -> np.ndarray:
    """Class ids with at least one but at most train_per_class + val_per_class labelled nodes."""
    counts = np.bincount(labels[labels >= 0], minlength=1)
    return np.flatnonzero((counts > 0) & (counts <= split.train_per_class + split.val_per_class))


def _prepare(
    name: str,
    src: np.ndarray,
    dst: np.ndarray,
    feat: np.ndarray | sp.spmatrix,
    labels: np.ndarray,
    masks: Masks | None,
    *,
    kind: str,
    features: Features | None,
    largest_component: bool | None,
    split: SplitSpec,
    rng: np.random.Generator,
    clamp: bool = False,
) -> GraphDataset:
    """One graph (src/dst simplified): largest component, small classes, class ids, features, then the
    split (unless `masks` fixes it, in which case the masks are cut to the nodes kept)."""
    n = feat.shape[0]
    features = features or default_features(kind)
    if largest_component is None:
        largest_component = default_largest_component(kind, has_masks=masks is not None)
    record: dict[str, object] = {"features": features, "largest_component": largest_component}
    keep = _lcc(src, dst, n, np.arange(n)) if largest_component else np.arange(n)
    if masks is None and labels.ndim == 1 and split.small_classes == "drop" and not clamp:
        dropped: list[int] = []
        while True:  # Shchur et al.: drop, take the largest component again, until nothing changes
            present = np.unique(labels[keep][labels[keep] >= 0])
            small = _small_classes(labels[keep], split)
            if len(small) == 0 or len(small) == len(present):  # all too small: per_class_split says so
                break
            dropped.extend(small.tolist())
            keep = keep[~np.isin(labels[keep], small)]
            if largest_component:
                keep = _lcc(src, dst, n, keep)
        if dropped:
            record["dropped_classes"] = sorted(dropped)
    if len(keep) < n:
        index = np.full(n, -1, np.int64)
        index[keep] = np.arange(len(keep))
        inside = (index[src] >= 0) & (index[dst] >= 0)
        src, dst = index[src[inside]], index[dst[inside]]
        feat, labels = feat[keep], labels[keep]
        if masks is not None:
            masks = tuple(m[keep] for m in masks)  # type: ignore[assignment]
    record["nodes_kept"], record["nodes_in_source"] = len(keep), n
    num_classes = labels.shape[1] if labels.ndim == 2 else 0
    if labels.ndim == 1:
        classes = np.unique(labels[labels >= 0])
        if len(classes) < 2:
            raise DatasetError(
                f"only {len(classes)} class(es) left after preprocessing ({len(keep)} of {n} nodes kept); node "
                "classification needs at least 2: turn off dataset.largest_component or lower "
                "split.train_per_class/val_per_class"
            )
        labels = np.where(labels >= 0, np.searchsorted(classes, labels), -1)
        num_classes = len(classes)
    if features == "row-normalized":
        feat = row_normalize(feat)
    if sp.issparse(feat):
        feat = feat.toarray()
    feat = np.asarray(feat, dtype=np.float32)
    if masks is None:
        masks = per_class_split(labels, split.train_per_class, split.val_per_class, rng, clamp=clamp)
    elif not masks[0].any() or not masks[2].any():
        raise DatasetError(
            f"the largest component ({len(keep)} of {n} nodes) holds no "
            f"{'training' if not masks[0].any() else 'test'} node of the given split; set "
            "dataset.largest_component to false"
        )
    g = _graph(src, dst, feat, labels, masks)
    return GraphDataset(name, feat.shape[1], num_classes, labels.ndim == 2, [g], [g], [g], record)


def _lcc(src: np.ndarray, dst: np.ndarray, n: int, nodes: np.ndarray) -> np.ndarray:
    """The largest connected component of the subgraph induced by `nodes`, as sorted original ids."""
    index = np.full(n, -1, np.int64)
    index[nodes] = np.arange(len(nodes))
    inside = (index[src] >= 0) & (index[dst] >= 0)
    return nodes[largest_component(index[src[inside]], index[dst[inside]], len(nodes))]


def _inductive(
    name: str, pieces: Sequence[Piece], which: Sequence[int], num_classes: int, features: Features = "raw"
) -> GraphDataset:
    splits: tuple[list[Graph], ...] = ([], [], [])
    for (src, dst, feat, labels), w in zip(pieces, which, strict=True):
        own = _labelled(labels)
        masks = tuple(own if i == w else np.zeros_like(own) for i in range(3))
        if features == "row-normalized":
            feat = row_normalize(feat)
        splits[int(w)].append(_graph(src, dst, feat, labels, masks))  # type: ignore[arg-type]
    feat, labels = pieces[0][2], pieces[0][3]
    record: dict[str, object] = {"features": features, "largest_component": False}
    return GraphDataset(name, feat.shape[1], num_classes, labels.ndim == 2, *splits, preprocessing=record)
