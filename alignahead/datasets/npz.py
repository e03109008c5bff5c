"""GNN-benchmark npz files (Shchur et al. 2018) and uploads: read, validated and refused safely.

Files are never unpickled, their declared sizes are checked before anything is inflated (zip bombs),
and every problem is a DatasetError that says what to change in the file.
"""

from __future__ import annotations

import io
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import scipy.sparse as sp

from alignahead.datasets.dataset import MASK_KEYS, MAX_BYTES, DatasetError, GraphDataset, Masks
from alignahead.datasets.preprocessing import (
    _DEFAULT_SPLIT,
    _inductive,
    _labelled,
    _prepare,
    default_features,
    graph_split,
    simplify_edges,
)
from alignahead.spec import Features, SplitSpec

_ADJ_KEYS = ("adj_data", "adj_indices", "adj_indptr", "adj_shape")
_ATTR_KEYS = ("attr_data", "attr_indices", "attr_indptr", "attr_shape")
_LAYOUT = (
    "GNN-benchmark npz layout (Shchur et al. 2018): adj_data/adj_indices/adj_indptr/adj_shape (CSR "
    "adjacency), attr_data/attr_indices/attr_indptr/attr_shape (CSR features) or attr_matrix, labels"
)


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
    src, dst = simplify_edges(coo.row[nonzero], coo.col[nonzero], n)

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
