"""Graphs to run trained students on: the one a checkpoint was trained on, or one's own, prepared alike.

student = alignahead.load_student("student0.safetensors")
graph = alignahead.load_graph(student)  # from the checkpoint's dataset section and seed
logits = student.predict(graph)  # [N, C]
mask = graph.ndata["test_mask"]
accuracy = (logits[mask].argmax(1) == graph.ndata["label"][mask]).float().mean()
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Literal

import torch

from alignahead.checkpoints import read_metadata
from alignahead.datasets import DatasetError, GraphDataset, load_dataset
from alignahead.datasets.preprocessing import simplify_edges
from alignahead.graph import Graph, as_graph
from alignahead.models import Student
from alignahead.spec import DatasetSpec, JobSpec, TrainingSpec

Split = Literal["train", "val", "test"]
SPLITS = ("train", "val", "test")


def _from_metadata(meta: dict[str, str], what: str) -> tuple[DatasetSpec, int]:
    if "dataset" not in meta:
        raise ValueError(
            f"{what} records no dataset (checkpoints written before it did); pass the job's spec or its "
            "dataset section and seed instead: load_graph(spec) or load_graph(spec.dataset, seed=...)"
        )
    return DatasetSpec.model_validate(json.loads(meta["dataset"])), int(meta.get("seed", TrainingSpec().seed))


def dataset_source(source: Any, seed: int | None = None) -> tuple[DatasetSpec, int]:
    """(dataset section, seed) from a student, a checkpoint (path or bytes), a JobSpec or a dict of
    one, or a dataset section (a DatasetSpec or its dict; `seed` then defaults to training.seed's 0)."""
    if isinstance(source, Student):
        dataset, recorded = _from_metadata(source.metadata, "this student")
    elif isinstance(source, bytes):
        dataset, recorded = _from_metadata(read_metadata(source), "this checkpoint")
    elif isinstance(source, str | os.PathLike):
        dataset, recorded = _from_metadata(read_metadata(Path(source).read_bytes()), f"checkpoint {source}")
    elif isinstance(source, JobSpec):
        dataset, recorded = source.dataset, source.training.seed
    elif isinstance(source, DatasetSpec):
        dataset, recorded = source, TrainingSpec().seed
    elif isinstance(source, dict):
        if {"dataset", "students", "training", "distillation"} & source.keys():
            return dataset_source(JobSpec.model_validate(source), seed)
        dataset, recorded = DatasetSpec.model_validate(source), TrainingSpec().seed
    else:
        raise TypeError(
            "load_graph takes a student, a checkpoint path or bytes, a JobSpec (or its dict) or a dataset "
            f"section, not {type(source).__name__}"
        )
    return dataset, recorded if seed is None else seed


def load_graph(
    source: Any,
    split: Split = "test",
    *,
    seed: int | None = None,
    data_dir: str | os.PathLike[str] | None = None,
    npz: str | os.PathLike[str] | bytes | None = None,
) -> Graph:
    """The graph that holds a split's nodes, exactly as the trainer built it (an alignahead `Graph`;
    `.to_dgl()` makes a `DGLGraph` of it where DGL is installed).

    `source`: a loaded student (`alignahead.load_student`, `job.load_student()`), a checkpoint file or
    its bytes, a JobSpec or its dict, or a dataset section with `seed` (default 0, training.seed's
    default). ndata holds 'feat' [N, F] float32, 'label' ([N] int64, or [N, C] float 0/1 multilabel)
    and 'train_mask'/'val_mask'/'test_mask' [N] bool. One-graph datasets give that one graph (the
    masks pick the split's nodes); multi-graph ones give the split's graphs as one batched graph.
    `npz`: the file for datasets 'upload' (the service keeps uploads; give your copy) and 'npz' (when
    the recorded path is on another machine). `data_dir`: where built-in datasets are (downloaded).
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    dataset_spec, graph_seed = dataset_source(source, seed)
    dataset = _dataset(dataset_spec, graph_seed, data_dir, npz)
    graphs = {"train": dataset.train, "val": dataset.val, "test": dataset.test}[split]
    if not graphs:
        raise DatasetError(f"dataset {dataset.name!r} has no {split} graphs")
    return Graph.batch(graphs)


def _dataset(
    spec: DatasetSpec, seed: int, data_dir: str | os.PathLike[str] | None, npz: str | os.PathLike[str] | bytes | None
) -> GraphDataset:
    if npz is not None:
        if spec.name not in ("npz", "upload"):
            raise ValueError(f"npz= is for datasets 'npz' and 'upload'; this graph is dataset {spec.name!r}")
        source = npz if isinstance(npz, bytes) else Path(npz)
        # read like an upload: the same validation, split and seed rules as the service's worker
        local = spec.model_copy(update={"name": "upload", "path": None, "upload_id": spec.upload_id or "local"})
        return load_dataset(local, seed=seed, resolve_upload=lambda _: source)
    if spec.name == "upload":
        raise DatasetError(
            f"this graph is the uploaded dataset {spec.upload_id!r}; pass your copy of the file: "
            "load_graph(..., npz='graph.npz')"
        )
    return load_dataset(spec, seed=seed, data_dir=data_dir)


def prepare_graph(graph: Graph | Any, feat: torch.Tensor | None = None) -> Graph:
    """One's own graph (an alignahead `Graph` or a `DGLGraph`) made like the training graphs: edges
    symmetric and deduplicated, exactly one self-loop per node, ndata['feat'] float32 (given here or
    already on the graph). Node order is kept, so logits line up with your node ids; other ndata is
    kept, edge data is dropped. Returns an alignahead `Graph` on the CPU."""
    graph = as_graph(graph)
    ndata = {key: value.cpu() for key, value in graph.ndata.items()}
    if feat is not None:
        ndata["feat"] = feat.cpu()
    if "feat" not in ndata:
        raise ValueError("the graph has no ndata['feat']; pass the node features [N, F] as `feat`")
    n = graph.num_nodes()
    if ndata["feat"].dim() != 2 or ndata["feat"].shape[0] != n:
        raise ValueError(f"features must be [num_nodes={n}, F], got {list(ndata['feat'].shape)}")
    ndata["feat"] = ndata["feat"].float()
    src, dst = (t.cpu().numpy() for t in graph.edges())
    s, d = simplify_edges(src, dst, n)  # symmetric, without duplicates or self-loops
    loops = torch.arange(n)
    return Graph(torch.cat([torch.from_numpy(s), loops]), torch.cat([torch.from_numpy(d), loops]), n, ndata)
