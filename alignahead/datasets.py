"""One dataset registry: DGL's public benchmarks, GNN-benchmark npz files, uploads and synthetic graphs.

Every source ends up as the same `GraphDataset`, so trainers never branch on where a graph came from.
Rules that hold for every graph (and that trainers may rely on):

- ndata 'feat' float32 [N, F] as stored, or row-normalised (`dataset.features`); 'label' int64 [N] or,
  multilabel, float32 [N, C]; 'train_mask', 'val_mask', 'test_mask' bool [N], pairwise disjoint.
- Edges are symmetrised and deduplicated, and every node has exactly one self-loop, so GCN/GAT never meet
  a node without in-edges.
- npz labels -1 mean "unlabelled": such nodes keep label -1 and are in no mask. Other class ids are
  remapped to 0..C-1 when the file skips ids.
- Single-graph (transductive) datasets: train, val and test are the same one-graph list; masks pick nodes.
  Multi-graph (inductive) datasets: a graph lies wholly in one split; its own mask marks its labelled nodes.
- Random splits (`per_class_split`): per class, `train_per_class` nodes for training, `val_per_class` for
  validation, the rest test (Shchur et al. 2018). Multilabel graphs draw train_per_class * C and
  val_per_class * C nodes at random instead. Multi-graph files without masks, and multi-graph synthetic
  data, split whole graphs about 70/15/15 with at least one graph per split (`graph_split`).
- Preprocessing of a single graph, in this order (`_prepare`): the largest connected component
  (`dataset.largest_component`), then classes too small for the split removed (`split.small_classes`,
  then the largest component again), class ids remapped to 0..C-1, features row-normalised
  (`dataset.features`), and last the split, drawn inside what is left. Unset options take the
  dataset's literature default (`default_features`, `default_largest_component`); what was applied is
  in `GraphDataset.preprocessing`.
"""

from __future__ import annotations

import io
import os
import socket
import threading
import urllib.parse
import urllib.request
import zipfile
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import scipy.sparse as sp
import torch

os.environ.setdefault("DGLBACKEND", "pytorch")
import dgl  # noqa: E402

from alignahead.spec import DATASET_NAMES, DatasetSpec, Features, SplitSpec, SyntheticSpec  # noqa: E402

MAX_BYTES = 2 * 1024**3  # cap on an npz's uncompressed size and on dense feature matrices
DOWNLOAD_TIMEOUT_S = 10.0  # how long to wait for DGL's server before calling the machine offline
MASK_KEYS = ("train_mask", "val_mask", "test_mask")
_ADJ_KEYS = ("adj_data", "adj_indices", "adj_indptr", "adj_shape")
_ATTR_KEYS = ("attr_data", "attr_indices", "attr_indptr", "attr_shape")
_DEFAULT_SPLIT = SplitSpec()  # frozen, so safe as a default argument
_LAYOUT = (
    "GNN-benchmark npz layout (Shchur et al. 2018): adj_data/adj_indices/adj_indptr/adj_shape (CSR "
    "adjacency), attr_data/attr_indices/attr_indptr/attr_shape (CSR features) or attr_matrix, labels"
)

Masks = tuple[np.ndarray, np.ndarray, np.ndarray]
Piece = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]  # src, dst, features, labels of one graph


class DatasetError(ValueError):
    """A dataset problem the user can fix; the message says what is wrong and how to fix it."""


@dataclass
class GraphDataset:
    name: str
    num_features: int
    num_classes: int  # number of labels when multilabel
    multilabel: bool
    train: list[dgl.DGLGraph]
    val: list[dgl.DGLGraph]
    test: list[dgl.DGLGraph]
    # what loading did to the source, for logs and reports: features, largest_component, nodes kept, ...
    preprocessing: dict[str, object] = field(default_factory=dict)

    @property
    def transductive(self) -> bool:
        return len(self.train) == 1 and len(self.test) == 1 and self.train[0] is self.test[0]


@dataclass(frozen=True)
class DatasetInfo:
    name: str
    kind: str  # 'builtin' | 'file' | 'generated'
    description: str


# name -> (kind, DGL class that downloads it into data_dir, description)
_REGISTRY: dict[str, tuple[str, str | None, str]] = {
    "ppi": ("builtin", "PPIDataset", "Protein-protein interaction, 20/2/2 graphs, 121 labels (multilabel)"),
    "coauthor-cs": ("builtin", "CoauthorCSDataset", "Coauthor CS, 15 classes, per-class random split"),
    "coauthor-physics": ("builtin", "CoauthorPhysicsDataset", "Coauthor Physics, 5 classes, random split"),
    "amazon-computers": (
        "builtin",
        "AmazonCoBuyComputerDataset",
        "Amazon Computers, 10 classes, random split",
    ),
    "amazon-photo": ("builtin", "AmazonCoBuyPhotoDataset", "Amazon Photo, 8 classes, per-class random split"),
    "cora": ("builtin", "CoraGraphDataset", "Cora citation graph (Planetoid), 7 classes, public split"),
    "citeseer": (
        "builtin",
        "CiteseerGraphDataset",
        "CiteSeer citation graph (Planetoid), 6 classes, public split",
    ),
    "pubmed": ("builtin", "PubmedGraphDataset", "PubMed citation graph (Planetoid), 3 classes, public split"),
    "npz": ("file", None, "A .npz file in the GNN-benchmark layout (Shchur et al.), given by 'path'"),
    "synthetic": ("generated", None, "Seeded stochastic-block-model graph(s) with class-correlated features"),
    "upload": ("file", None, "An npz file uploaded to the service, given by 'upload_id'"),
}


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


def list_datasets() -> list[DatasetInfo]:
    return [DatasetInfo(name, kind, text) for name, (kind, _, text) in _REGISTRY.items()]


def default_data_dir() -> Path:
    env = os.environ.get("ALIGNAHEAD_DATA_DIR")
    return Path(env) if env else Path.home() / ".cache" / "alignahead" / "datasets"


def load_dataset(
    spec: DatasetSpec,
    *,
    seed: int,
    data_dir: str | Path | None = None,
    resolve_upload: Callable[[str], bytes | Path] | None = None,
    max_bytes: int = MAX_BYTES,
) -> GraphDataset:
    """Build a job's dataset; `seed` drives splits and synthetic graphs unless split.seed is set.
    `max_bytes` caps an npz's unpacked size and dense features, and a synthetic graph's size."""
    split_seed = seed if spec.split.seed is None else spec.split.seed
    options = {"features": spec.features, "largest_component": spec.largest_component}
    if spec.name == "synthetic":
        return make_synthetic(spec.synthetic, seed=split_seed, split=spec.split, max_bytes=max_bytes, **options)
    if spec.name == "npz":
        assert spec.path is not None  # DatasetSpec guarantees it
        name = f"npz:{Path(spec.path).stem}"
        return load_npz(
            spec.path, name=name, split=spec.split, seed=split_seed, kind="npz", max_bytes=max_bytes, **options
        )
    if spec.name == "upload":
        if resolve_upload is None:
            raise DatasetError(
                "dataset 'upload' only works inside the service, which knows the uploads; "
                "outside it use name 'npz' with the file's path"
            )
        try:
            source = resolve_upload(spec.upload_id or "")
        except (LookupError, OSError) as e:
            raise DatasetError(
                f"unknown upload_id {spec.upload_id!r} ({e}); list uploads with GET /v1/datasets "
                "or upload the file again with POST /v1/datasets"
            ) from e
        name = f"upload:{spec.upload_id}"
        return load_npz(
            source, name=name, split=spec.split, seed=split_seed, kind="upload", max_bytes=max_bytes, **options
        )
    if spec.name in _REGISTRY and _REGISTRY[spec.name][1]:
        folder = Path(data_dir) if data_dir is not None else default_data_dir()
        return _load_dgl(spec.name, folder.expanduser(), spec.split, split_seed, **options)
    raise DatasetError(f"unknown dataset {spec.name!r}; choose one of: {', '.join(DATASET_NAMES)}")


# --- graphs and splits -------------------------------------------------------------------------


def _simplify(src: np.ndarray, dst: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric, duplicate-free edges without self-loops (those are added back exactly once later)."""
    s = np.concatenate([src, dst]).astype(np.int64)
    d = np.concatenate([dst, src]).astype(np.int64)
    keep = s != d
    key = np.unique(s[keep] * n + d[keep])
    return key // n, key % n


def _graph(src: np.ndarray, dst: np.ndarray, feat: np.ndarray, labels: np.ndarray, masks: Masks) -> dgl.DGLGraph:
    n = feat.shape[0]
    s, d = _simplify(src, dst, n)
    loops = np.arange(n, dtype=np.int64)
    g = dgl.graph(
        (torch.from_numpy(np.concatenate([s, loops])), torch.from_numpy(np.concatenate([d, loops]))),
        num_nodes=n,
    )
    g.ndata["feat"] = torch.from_numpy(np.ascontiguousarray(feat, dtype=np.float32))
    label_dtype = np.float32 if labels.ndim == 2 else np.int64
    g.ndata["label"] = torch.from_numpy(np.ascontiguousarray(labels, dtype=label_dtype))
    for key, mask in zip(MASK_KEYS, masks, strict=True):
        g.ndata[key] = torch.from_numpy(np.ascontiguousarray(mask, dtype=bool))
    return g


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
    splits: tuple[list[dgl.DGLGraph], ...] = ([], [], [])
    for (src, dst, feat, labels), w in zip(pieces, which, strict=True):
        own = _labelled(labels)
        masks = tuple(own if i == w else np.zeros_like(own) for i in range(3))
        if features == "row-normalized":
            feat = row_normalize(feat)
        splits[int(w)].append(_graph(src, dst, feat, labels, masks))  # type: ignore[arg-type]
    feat, labels = pieces[0][2], pieces[0][3]
    record: dict[str, object] = {"features": features, "largest_component": False}
    return GraphDataset(name, feat.shape[1], num_classes, labels.ndim == 2, *splits, preprocessing=record)


# --- synthetic ---------------------------------------------------------------------------------


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
    directions = rng.normal(size=(c, f))
    means = spec.feature_signal * directions / (np.linalg.norm(directions, axis=1, keepdims=True) + 1e-12)
    pieces = [_sbm(n, c, spec.avg_degree, spec.homophily, means, rng) for _ in range(count)]
    if count == 1:
        src, dst, feat, labels = pieces[0]
        s, d = _simplify(src, dst, n)
        options = {"features": features, "largest_component": largest_component}
        return _prepare(
            "synthetic", s, d, feat, labels, None, kind="synthetic", split=split, rng=rng, clamp=True, **options
        )
    if largest_component:
        raise DatasetError("largest_component applies to a single graph; synthetic num_graphs is above 1")
    return _inductive("synthetic", pieces, graph_split(count, rng), c, features or default_features("synthetic"))


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


# --- DGL builtins ------------------------------------------------------------------------------


def _check_reachable(url: str, timeout: float) -> None:
    """DGL's downloader calls requests without a timeout and tries 12 times, which on a firewalled
    machine hangs for many minutes; one bounded TCP connect tells us first whether to bother."""
    target = urllib.parse.urlsplit(url)
    proxy = urllib.request.getproxies().get(target.scheme)
    if proxy:
        target = urllib.parse.urlsplit(proxy if "://" in proxy else f"http://{proxy}")
    host, port = target.hostname or "", target.port or (443 if target.scheme == "https" else 80)
    errors: list[OSError] = []

    def connect() -> None:
        try:
            socket.create_connection((host, port), timeout=timeout).close()
        except OSError as e:
            errors.append(e)

    thread = threading.Thread(target=connect, daemon=True)  # getaddrinfo ignores socket timeouts
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        raise ConnectionError(f"no answer from {host}:{port} within {timeout:g} s")
    if errors:
        raise ConnectionError(f"cannot reach {host}:{port}: {errors[0]}")


def _guarded(cls: type) -> type:
    """The DGL class with a reachability check before it downloads; data already on disk never calls it."""

    class Guarded(cls):  # type: ignore[misc, valid-type]
        def download(self) -> None:
            if not hasattr(self, "_unreachable"):  # DGL retries a failed download once; probe once
                try:
                    _check_reachable(self.url, DOWNLOAD_TIMEOUT_S)
                    self._unreachable = None
                except ConnectionError as e:
                    self._unreachable = e
            if self._unreachable is not None:
                raise self._unreachable
            super().download()

    Guarded.__name__ = Guarded.__qualname__ = cls.__name__
    return Guarded


def _load_dgl(
    name: str,
    folder: Path,
    split: SplitSpec,
    seed: int,
    *,
    features: Features | None = None,
    largest_component: bool | None = None,
) -> GraphDataset:
    cls_name = str(_REGISTRY[name][1])
    cls = _guarded(getattr(dgl.data, cls_name))
    try:
        if name == "ppi":
            parts = [list(cls(mode=m, raw_dir=str(folder), verbose=False)) for m in ("train", "valid", "test")]
        else:
            parts = [[cls(raw_dir=str(folder), verbose=False)[0]]]
    except Exception as e:
        raise DatasetError(
            f"could not load dataset {name!r}: DGL found no usable copy in {folder} and could not download "
            f"it ({type(e).__name__}: {e}). This machine may have no internet access. To fix it: put DGL's "
            f"files for {name!r} in {folder} (e.g. run dgl.data.{cls_name}(raw_dir=...) on a machine "
            "with internet access and copy the folder), set data_dir or ALIGNAHEAD_DATA_DIR to a folder "
            "that has them, or convert the dataset to the GNN-benchmark npz layout and use name 'npz' "
            "with its path (or upload it to the service)"
        ) from e
    pieces = [
        (*(t.numpy() for t in g.edges()), g.ndata["feat"].numpy(), g.ndata["label"].numpy())
        for part in parts
        for g in part
    ]
    if name == "ppi":
        if largest_component:
            raise DatasetError("largest_component applies to a single graph; ppi has 24")
        which = [i for i, part in enumerate(parts) for _ in part]
        return _inductive(name, pieces, which, pieces[0][3].shape[1], features or default_features(name))
    g = parts[0][0]
    masks = None
    if all(k in g.ndata for k in MASK_KEYS):  # Planetoid's public split
        masks = tuple(g.ndata[k].numpy().astype(bool) for k in MASK_KEYS)
    src, dst, feat, labels = pieces[0]
    src, dst = _simplify(src, dst, feat.shape[0])
    options = {"features": features, "largest_component": largest_component}
    rng = np.random.default_rng(seed)
    return _prepare(name, src, dst, feat, labels, masks, kind=name, split=split, rng=rng, **options)  # type: ignore[arg-type]


# --- npz files ---------------------------------------------------------------------------------


@dataclass
class _Npz:
    src: np.ndarray  # simplified, global node ids
    dst: np.ndarray
    feat: sp.csr_matrix | np.ndarray
    labels: np.ndarray
    num_classes: int
    graph_ids: np.ndarray | None  # 0..G-1 per node, None for one graph
    num_graphs: int
    masks: Masks | None


def inspect_npz(source: str | Path | bytes, *, max_bytes: int = MAX_BYTES) -> dict:
    """Validate a file without building graphs, so an upload endpoint can refuse it before storing it."""
    d = _read_npz(source, max_bytes)
    return {
        "num_nodes": int(d.feat.shape[0]),
        "num_edges": int(len(d.src) + d.feat.shape[0]),  # directed, self-loops included, as loaded
        "num_features": int(d.feat.shape[1]),
        "num_classes": d.num_classes,
        "multilabel": d.labels.ndim == 2,
        "num_graphs": d.num_graphs,
        "has_split": d.masks is not None,
    }


def load_npz(
    source: str | Path | bytes,
    *,
    name: str = "npz",
    split: SplitSpec = _DEFAULT_SPLIT,
    seed: int = 0,
    max_bytes: int = MAX_BYTES,
    features: Features | None = None,
    largest_component: bool | None = None,
    kind: str = "npz",
) -> GraphDataset:
    """Load a GNN-benchmark npz; masks in the file win, else `split` is drawn with split.seed or `seed`.

    `features`/`largest_component` None take the defaults of `kind` ('npz' or 'upload'): row-normalised
    features, and the largest component for a single graph without masks."""
    d = _read_npz(source, max_bytes)
    n, f = d.feat.shape
    if 4 * n * f > max_bytes:
        raise DatasetError(
            f"features of {n} x {f} take {4 * n * f / 2**30:.1f} GiB as a dense float32 matrix, above the "
            f"{max_bytes / 2**30:.1f} GiB cap; reduce the features or raise max_bytes"
        )
    rng = np.random.default_rng(seed if split.seed is None else split.seed)
    if d.graph_ids is None:
        options = {"features": features, "largest_component": largest_component}
        return _prepare(name, d.src, d.dst, d.feat, d.labels, d.masks, kind=kind, split=split, rng=rng, **options)
    if largest_component:
        raise DatasetError(
            f"largest_component applies to a single graph, but this file holds {d.num_graphs} (graph_ids); "
            "set dataset.largest_component to false"
        )
    feat = d.feat.toarray() if sp.issparse(d.feat) else d.feat
    feat = feat.astype(np.float32, copy=False)
    gid, count = d.graph_ids, d.num_graphs
    which = _graph_of_masks(d) if d.masks is not None else graph_split(count, rng)
    # group nodes and edges by graph once instead of scanning everything per graph
    node_order = np.argsort(gid, kind="stable")
    node_bounds = np.searchsorted(gid[node_order], np.arange(count + 1))
    local = np.empty(n, np.int64)
    local[node_order] = np.arange(n) - node_bounds[gid[node_order]]
    edge_gid = gid[d.src]
    edge_order = np.argsort(edge_gid, kind="stable")
    edge_bounds = np.searchsorted(edge_gid[edge_order], np.arange(count + 1))
    pieces = []
    for g in range(count):
        nodes = node_order[node_bounds[g] : node_bounds[g + 1]]
        edges = edge_order[edge_bounds[g] : edge_bounds[g + 1]]
        pieces.append((local[d.src[edges]], local[d.dst[edges]], feat[nodes], d.labels[nodes]))
    return _inductive(name, pieces, which, d.num_classes, features or default_features(kind))


def _graph_of_masks(d: _Npz) -> np.ndarray:
    """Split index per graph from the node masks; each graph's labelled nodes must share one mask."""
    assert d.masks is not None and d.graph_ids is not None
    node_split = np.select(list(d.masks), [0, 1, 2], default=-1)
    labelled = _labelled(d.labels)
    gids, splits = d.graph_ids[labelled], node_split[labelled]
    lo, hi = np.full(d.num_graphs, 3), np.full(d.num_graphs, -2)  # -2: no labelled node at all
    np.minimum.at(lo, gids, splits)
    np.maximum.at(hi, gids, splits)
    bad = np.flatnonzero((lo != hi) | (hi < 0))
    if len(bad):
        g = int(bad[0])
        found = np.unique(splits[gids == g])
        names = [MASK_KEYS[i] if i >= 0 else "no mask" for i in found] or ["no labelled node"]
        raise DatasetError(
            f"graph {g} has labelled nodes in {', '.join(names)}; in a multi-graph file every graph "
            "must lie wholly in one split (all its labelled nodes in the same mask)"
        )
    which = hi
    return which


def _open_arrays(source: str | Path | bytes, max_bytes: int) -> dict[str, np.ndarray]:
    if isinstance(source, bytes | bytearray | memoryview):
        what, src = "the uploaded data", io.BytesIO(bytes(source))
    else:
        what, src = f"file {source}", Path(source).expanduser()
        if not src.is_file():
            raise DatasetError(f"npz file {src} does not exist or is not a file; check the dataset 'path'")
    try:
        with zipfile.ZipFile(src) as zf:
            infos = zf.infolist()
            # declared sizes bound what zipfile will ever inflate, so checking them defuses zip bombs
            total = sum(info.file_size for info in infos)
            if total > max_bytes:
                raise DatasetError(
                    f"{what} unpacks to {total / 2**30:.2f} GiB, above the {max_bytes / 2**30:.2f} GiB "
                    "cap; shrink the dataset (sparse CSR features help) or raise max_bytes"
                )
            for info in infos:
                if info.filename.endswith(".npy"):
                    _check_member(zf, info, what)
        if isinstance(src, io.BytesIO):
            src.seek(0)
        with np.load(src, allow_pickle=False) as npz:
            wanted = (*_ADJ_KEYS, *_ATTR_KEYS, "attr_matrix", "labels", "graph_ids", *MASK_KEYS)
            return {k: npz[k] for k in wanted if k in npz.files}
    except DatasetError:
        raise
    except (
        zipfile.BadZipFile,
        zlib.error,
        EOFError,
        OSError,
        ValueError,
        RuntimeError,
        NotImplementedError,
    ) as e:
        raise DatasetError(
            f"{what} is not a readable .npz file ({type(e).__name__}: {e}); save it with numpy.savez or "
            f"numpy.savez_compressed in the {_LAYOUT}"
        ) from e


def _check_member(zf: zipfile.ZipFile, info: zipfile.ZipInfo, what: str) -> None:
    """Read only the .npy header: refuses pickled object arrays and shapes larger than the stored bytes
    (numpy would allocate the claimed shape before noticing the data is short)."""
    key = info.filename[:-4]
    with zf.open(info) as fh:
        version = np.lib.format.read_magic(fh)
        if version == (1, 0):
            shape, _, dtype = np.lib.format.read_array_header_1_0(fh)
        elif version == (2, 0):
            shape, _, dtype = np.lib.format.read_array_header_2_0(fh)
        else:
            raise DatasetError(f"{what}: array {key!r} uses .npy version {version}; re-save it with numpy.savez")
    if dtype.hasobject:
        raise DatasetError(
            f"{what}: array {key!r} holds Python objects ({dtype}), which would need unpickling and is "
            "refused; store plain numeric arrays (CSR parts, dense matrices, integer labels)"
        )
    claimed = int(np.prod(shape, dtype=object)) * dtype.itemsize
    if claimed > info.file_size:
        raise DatasetError(
            f"{what}: array {key!r} claims shape {shape} ({claimed} bytes) but only {info.file_size} bytes "
            "are stored; the file is corrupt or truncated, save it again"
        )


def _ints(arrays: dict[str, np.ndarray], key: str, ndim: int = 1) -> np.ndarray:
    a = arrays[key]
    if not np.issubdtype(a.dtype, np.integer) or a.ndim != ndim:
        raise DatasetError(f"{key} must be a {ndim}-D integer array, got {a.ndim}-D {a.dtype}")
    return a.astype(np.int64)


def _numbers(arrays: dict[str, np.ndarray], key: str, ndim: int) -> np.ndarray:
    a = arrays[key]
    if a.dtype.kind not in "biuf" or a.ndim != ndim:
        raise DatasetError(f"{key} must be a {ndim}-D numeric array, got {a.ndim}-D {a.dtype}")
    if a.dtype.kind == "f" and not np.isfinite(a).all():
        raise DatasetError(f"{key} contains NaN or infinite values; clean or impute them before loading")
    return a


def _csr(arrays: dict[str, np.ndarray], prefix: str) -> sp.csr_matrix:
    shape = _ints(arrays, f"{prefix}_shape")
    if shape.shape != (2,) or (shape < 0).any():
        raise DatasetError(f"{prefix}_shape must be two non-negative integers, got {shape.tolist()}")
    rows, cols = int(shape[0]), int(shape[1])
    indptr, indices = _ints(arrays, f"{prefix}_indptr"), _ints(arrays, f"{prefix}_indices")
    data = _numbers(arrays, f"{prefix}_data", 1)
    if len(indptr) != rows + 1:
        raise DatasetError(f"{prefix}_indptr has {len(indptr)} entries but {prefix}_shape needs rows + 1 = {rows + 1}")
    if indptr[0] != 0 or indptr[-1] != len(indices) or (np.diff(indptr) < 0).any():
        raise DatasetError(
            f"{prefix}_indptr must start at 0, never decrease and end at len({prefix}_indices) = {len(indices)}"
        )
    if len(data) != len(indices):
        raise DatasetError(f"{prefix}_data has {len(data)} entries but {prefix}_indices has {len(indices)}")
    if len(indices) and (indices.min() < 0 or indices.max() >= cols):
        raise DatasetError(
            f"{prefix}_indices has values in [{indices.min()}, {indices.max()}], outside [0, {cols}) "
            f"given by {prefix}_shape"
        )
    return sp.csr_matrix((data, indices, indptr), shape=(rows, cols))


def _read_npz(source: str | Path | bytes, max_bytes: int) -> _Npz:
    arrays = _open_arrays(source, max_bytes)
    missing = [k for k in (*_ADJ_KEYS, "labels") if k not in arrays]
    if not all(k in arrays for k in _ATTR_KEYS) and "attr_matrix" not in arrays:
        missing.append("attr_matrix (or attr_data/attr_indices/attr_indptr/attr_shape)")
    if missing:
        raise DatasetError(f"the npz file lacks {', '.join(missing)}; expected the {_LAYOUT}")

    adj = _csr(arrays, "adj")
    n = adj.shape[0]
    if adj.shape[1] != n:
        raise DatasetError(f"adj_shape must be square (N x N), got {adj.shape}")
    if n == 0:
        raise DatasetError("the graph is empty (adj_shape is 0 x 0); a dataset needs nodes")
    coo = adj.tocoo()
    nonzero = coo.data != 0
    src, dst = _simplify(coo.row[nonzero], coo.col[nonzero], n)

    has_csr = all(k in arrays for k in _ATTR_KEYS)
    feat = _csr(arrays, "attr") if has_csr else _numbers(arrays, "attr_matrix", 2)
    if feat.shape[0] != n or feat.shape[1] == 0:
        raise DatasetError(f"features have shape {feat.shape} but the adjacency has {n} nodes; need {n} x F, F >= 1")

    labels, num_classes = _labels(arrays["labels"], n)
    graph_ids, num_graphs = None, 1
    if "graph_ids" in arrays:
        raw = _ints(arrays, "graph_ids")
        if len(raw) != n or (raw < 0).any():
            raise DatasetError(f"graph_ids must hold {n} non-negative integers (one per node)")
        _, graph_ids = np.unique(raw, return_inverse=True)
        num_graphs = int(graph_ids.max()) + 1
        crossing = np.flatnonzero(graph_ids[src] != graph_ids[dst])
        if len(crossing):
            a, b = src[crossing[0]], dst[crossing[0]]
            raise DatasetError(
                f"{len(crossing) // 2} edges join different graphs (e.g. node {a} in graph {raw[a]} and "
                f"node {b} in graph {raw[b]}); every edge must stay inside one graph of graph_ids"
            )
        if num_graphs == 1:
            graph_ids = None

    masks = _masks(arrays, labels)
    d = _Npz(src, dst, feat, labels, num_classes, graph_ids, num_graphs, masks)
    if graph_ids is not None:
        if masks is not None:
            _graph_of_masks(d)
        elif num_graphs < 3:
            graph_split(num_graphs, np.random.default_rng(0))  # raises with the explanation
    return d


def _labels(raw: np.ndarray, n: int) -> tuple[np.ndarray, int]:
    if raw.shape[:1] != (n,) or raw.ndim not in (1, 2):
        raise DatasetError(f"labels must have shape [{n}] (classes) or [{n}, C] (0/1 multilabel), got {raw.shape}")
    if raw.ndim == 2:
        if raw.dtype.kind not in "biuf" or not ((raw == 0) | (raw == 1)).all() or raw.shape[1] == 0:
            raise DatasetError("2-D (multilabel) labels must hold only 0 and 1, with at least one column")
        return raw.astype(np.float32), raw.shape[1]
    if not np.issubdtype(raw.dtype, np.integer):
        raise DatasetError(f"labels must be integer class ids (-1 for unlabelled), got dtype {raw.dtype}")
    labels = raw.astype(np.int64)
    if (labels < -1).any():
        raise DatasetError(f"labels contain {labels.min()}; class ids must be >= 0, or -1 for unlabelled nodes")
    classes = np.unique(labels[labels >= 0])
    if len(classes) < 2:
        raise DatasetError(f"labels name {len(classes)} class(es); node classification needs at least 2")
    # remap sparse class ids to 0..C-1 (a no-op for the usual contiguous ids)
    return np.where(labels >= 0, np.searchsorted(classes, labels), -1), len(classes)


def _masks(arrays: dict[str, np.ndarray], labels: np.ndarray) -> Masks | None:
    present = [k for k in MASK_KEYS if k in arrays]
    if not present:
        return None
    if len(present) != 3:
        raise DatasetError(f"the file has {', '.join(present)} but not all of {', '.join(MASK_KEYS)}; give all or none")
    masks = []
    for key in MASK_KEYS:
        m = arrays[key]
        if m.shape != labels.shape[:1] or m.dtype.kind not in "biu" or not ((m == 0) | (m == 1)).all():
            raise DatasetError(f"{key} must be a boolean (or 0/1) array with one entry per node ({len(labels)})")
        masks.append(m.astype(bool))
    train, val, test = masks
    if (train.astype(int) + val + test > 1).any():
        raise DatasetError("train_mask, val_mask and test_mask overlap; a node may be in at most one of them")
    if (np.logical_or.reduce(masks) & ~_labelled(labels)).any():
        raise DatasetError("a mask includes unlabelled nodes (label -1); drop them from the masks")
    if not train.any() or not test.any():
        raise DatasetError("train_mask and test_mask must each select at least one node")
    return train, val, test
