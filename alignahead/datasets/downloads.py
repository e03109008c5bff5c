"""The public benchmarks, through DGL's own downloaders (PPI, Coauthor, Amazon, Planetoid).

DGL is imported here only, when a built-in dataset is asked for: the rest of the library trains and
predicts without it. Where DGL is not installed (Python 3.12 and later have no DGL wheel that imports
with current PyTorch), asking for one says so and names the ways around it.
"""

from __future__ import annotations

import socket
import threading
import urllib.parse
import urllib.request
from pathlib import Path

import numpy as np

from alignahead.datasets.dataset import MASK_KEYS, DatasetError, GraphDataset
from alignahead.datasets.preprocessing import _inductive, _prepare, default_features, simplify_edges
from alignahead.graph import import_dgl
from alignahead.spec import Features, SplitSpec

DOWNLOAD_TIMEOUT_S = 10.0  # how long to wait for DGL's server before calling the machine offline


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


def _dgl_data():  # noqa: ANN202 - the dgl.data module, typed by DGL
    """DGL's dataset module, imported on first use; a DatasetError that says what to do where DGL is absent."""
    try:
        import_dgl()
        import dgl.data
    except ImportError as e:  # DGL has no wheel for Python 3.12+ that imports with today's PyTorch
        raise DatasetError(
            f"the built-in datasets are downloaded by DGL: {e}. Without it: convert the dataset to the "
            "GNN-benchmark npz layout and use name 'npz' with its path, or upload it to the service"
        ) from e
    return dgl.data


def load_builtin(
    name: str,
    cls_name: str,
    folder: Path,
    split: SplitSpec,
    seed: int,
    *,
    features: Features | None = None,
    largest_component: bool | None = None,
) -> GraphDataset:
    """Dataset `name` through DGL's class `cls_name`, from `folder` or downloaded into it."""
    cls = _guarded(getattr(_dgl_data(), cls_name))
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
    src, dst = simplify_edges(src, dst, feat.shape[0])
    options = {"features": features, "largest_component": largest_component}
    rng = np.random.default_rng(seed)
    return _prepare(name, src, dst, feat, labels, masks, kind=name, split=split, rng=rng, **options)  # type: ignore[arg-type]
