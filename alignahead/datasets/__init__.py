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

Layout of this package: `dataset` (the GraphDataset type and DatasetError), `preprocessing` (the rules
above), `npz` (files and uploads), `synthetic` (generated graphs), `downloads` (DGL's downloaders, the
only place DGL is imported); this module holds the registry and `load_dataset`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from alignahead.datasets.dataset import MASK_KEYS, MAX_BYTES, DatasetError, GraphDataset
from alignahead.datasets.downloads import load_builtin
from alignahead.datasets.npz import inspect_npz, load_npz
from alignahead.datasets.preprocessing import (
    default_features,
    default_largest_component,
    graph_split,
    largest_component,
    per_class_split,
    row_normalize,
)
from alignahead.datasets.synthetic import make_synthetic
from alignahead.runtime import RuntimeSettings
from alignahead.spec import DATASET_NAMES, DatasetSpec

__all__ = [
    "MASK_KEYS",
    "MAX_BYTES",
    "DatasetError",
    "DatasetInfo",
    "GraphDataset",
    "default_data_dir",
    "default_features",
    "default_largest_component",
    "graph_split",
    "inspect_npz",
    "largest_component",
    "list_datasets",
    "load_dataset",
    "load_npz",
    "make_synthetic",
    "per_class_split",
    "row_normalize",
]


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


def list_datasets() -> list[DatasetInfo]:
    return [DatasetInfo(name, kind, text) for name, (kind, _, text) in _REGISTRY.items()]


def default_data_dir() -> Path:
    """ALIGNAHEAD_DATA_DIR, read by alignahead.runtime (default ~/.cache/alignahead/datasets)."""
    return RuntimeSettings().data_dir


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
        cls_name = str(_REGISTRY[spec.name][1])
        return load_builtin(spec.name, cls_name, folder.expanduser(), spec.split, split_seed, **options)
    raise DatasetError(f"unknown dataset {spec.name!r}; choose one of: {', '.join(DATASET_NAMES)}")
