"""A plain GCN (Kipf & Welling, ICLR 2017) written from scratch: the yardstick for our students' scores.

    python bench/plain_gcn.py [FILE.npz] [--seeds 10] [--features row-normalized|raw] [--full-graph]
                              [--stopping kipf|best-val|none]

It shares no model, trainer or preprocessing code with `alignahead`: it reads the GNN-benchmark npz
with scipy, takes the largest connected component and row-normalises the features itself, and
multiplies by D^-1/2 (A + I) D^-1/2 as a torch sparse matrix. Only the split is drawn with
`alignahead.datasets.per_class_split` and the same generator (`numpy.random.default_rng(seed)`), so
that with the same choices it trains on exactly the nodes that a job with `training.seed = seed`
trains on; `bench/cora_seeds.py` checks that the masks agree.

The model and recipe are Kipf & Welling's: 2 layers, 16 hidden units, ReLU, dropout 0.5 on the input
and hidden features, Glorot weights without bias, Adam (lr 0.01), L2 5e-4 on the first layer only,
at most 200 epochs with their early stopping (stop once the validation loss exceeds the mean of the
previous 10) and the test accuracy of the final weights. Each seed draws a new split and new weights,
as in Shchur et al. (2018), whose Cora figure for GCN is 81.5 %.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import scipy.sparse as sp
import torch
import torch.nn.functional as F
from scipy.sparse.csgraph import connected_components
from torch import nn

os.environ.setdefault("DGLBACKEND", "pytorch")
ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # `python bench/plain_gcn.py` puts bench/, not the repo root, on the path
    sys.path.insert(0, str(ROOT))

from alignahead.datasets import per_class_split  # noqa: E402

CORA = ROOT.parent / "shared" / "datasets" / "cora.npz"
STOPPING = ("kipf", "best-val", "none")


@dataclass
class Graph:
    adj: sp.csr_matrix  # [N, N] symmetric 0/1, no self-loops
    feat: sp.csr_matrix  # [N, F] float32 (bag-of-words features are ~1 % non-zero)
    labels: np.ndarray  # [N] int64
    nodes: np.ndarray  # [N] ids of these nodes in the file


def read_graph(path: str | Path, *, largest_component: bool = True, features: str = "row-normalized") -> Graph:
    """The file's graph made undirected and unweighted without self-loops, optionally cut to its largest
    connected component (Shchur et al.'s `standardize`), features optionally divided by their row sums."""
    with np.load(path, allow_pickle=False) as z:
        adj = sp.csr_matrix((z["adj_data"], z["adj_indices"], z["adj_indptr"]), shape=tuple(z["adj_shape"]))
        if "attr_data" in z.files:
            x = sp.csr_matrix((z["attr_data"], z["attr_indices"], z["attr_indptr"]), shape=tuple(z["attr_shape"]))
        else:
            x = sp.csr_matrix(z["attr_matrix"])
        labels = z["labels"].astype(np.int64)
    adj = ((adj + adj.T) != 0).astype(np.float32).tocsr()
    adj.setdiag(0)
    adj.eliminate_zeros()
    nodes = np.arange(adj.shape[0])
    if largest_component:
        _, comp = connected_components(adj, directed=False)
        nodes = np.flatnonzero(comp == np.bincount(comp).argmax())
        adj, x, labels = adj[nodes][:, nodes], x[nodes], labels[nodes]
    x = x.astype(np.float64)
    if features == "row-normalized":
        sums = np.asarray(abs(x).sum(1)).ravel()
        x = sp.diags(np.divide(1.0, sums, out=np.zeros_like(sums), where=sums > 0)) @ x
    elif features != "raw":
        raise ValueError(f"features must be 'raw' or 'row-normalized', got {features!r}")
    return Graph(adj.tocsr(), sp.csr_matrix(x, dtype=np.float32), labels, nodes)


def to_torch(m: sp.spmatrix) -> torch.Tensor:
    m = m.tocoo()
    index = torch.from_numpy(np.vstack([m.row, m.col]).astype(np.int64))
    values = torch.from_numpy(m.data.astype(np.float32))
    return torch.sparse_coo_tensor(index, values, m.shape, check_invariants=True).coalesce()


def renormalized_adjacency(adj: sp.csr_matrix) -> torch.Tensor:
    """D^-1/2 (A + I) D^-1/2, Kipf & Welling's propagation matrix, as a torch sparse tensor [N, N]."""
    a = adj + sp.eye(adj.shape[0], dtype=np.float32)
    d = np.asarray(a.sum(1)).ravel() ** -0.5
    return to_torch(sp.diags(d) @ a @ sp.diags(d))


def sparse_dropout(x: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    """Dropout on the stored values of a sparse matrix (Kipf's sparse_dropout)."""
    if not training or p == 0:
        return x
    keep = torch.rand(x._nnz()) >= p
    return torch.sparse_coo_tensor(x.indices()[:, keep], x.values()[keep] / (1 - p), x.shape, check_invariants=False)


class PlainGCN(nn.Module):
    """Two graph convolutions, no bias (as in Kipf's code): logits = A relu(A drop(X) W1) drop W2."""

    def __init__(self, in_feats: int, hidden: int, classes: int, dropout: float) -> None:
        super().__init__()
        self.w1 = nn.Parameter(nn.init.xavier_uniform_(torch.empty(in_feats, hidden)))
        self.w2 = nn.Parameter(nn.init.xavier_uniform_(torch.empty(hidden, classes)))
        self.dropout = dropout

    def forward(self, a: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        x = sparse_dropout(x, self.dropout, self.training)
        h = torch.relu(torch.sparse.mm(a, torch.sparse.mm(x, self.w1)))
        h = F.dropout(h, self.dropout, self.training)
        return torch.sparse.mm(a, h @ self.w2)


@dataclass
class Run:
    seed: int
    test: float  # accuracy on the test nodes, of the weights that the stopping rule keeps
    val: float
    epochs: int


def train(
    graph: Graph,
    masks: tuple[np.ndarray, np.ndarray, np.ndarray],
    seed: int,
    *,
    hidden: int = 16,
    dropout: float = 0.5,
    lr: float = 0.01,
    weight_decay: float = 5e-4,
    epochs: int = 200,
    window: int = 10,
    stopping: str = "kipf",
) -> Run:
    """One seed. `stopping`: 'kipf' stops once the validation loss exceeds the mean of the previous
    `window` epochs and reports the final weights; 'best-val' runs all epochs and reports the test
    accuracy at the first best validation accuracy (our trainer's rule); 'none' reports the last epoch."""
    torch.manual_seed(seed)
    a = renormalized_adjacency(graph.adj)
    x, y = to_torch(graph.feat), torch.from_numpy(graph.labels)
    train_m, val_m, test_m = (torch.from_numpy(m) for m in masks)
    model = PlainGCN(x.shape[1], hidden, int(graph.labels.max()) + 1, dropout)
    opt = torch.optim.Adam(model.parameters(), lr=lr)

    def loss_on(logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        # Kipf's loss: cross-entropy plus weight_decay * ||W1||^2 / 2 (tf.nn.l2_loss), first layer only
        return F.cross_entropy(logits[mask], y[mask]) + weight_decay * model.w1.pow(2).sum() / 2

    def accuracy(logits: torch.Tensor, mask: torch.Tensor) -> float:
        return (logits[mask].argmax(1) == y[mask]).float().mean().item()

    val_losses: list[float] = []
    best = (-1.0, 0.0)  # (val accuracy, test accuracy at it)
    epoch = 0
    for epoch in range(1, epochs + 1):
        model.train()
        opt.zero_grad()
        loss_on(model(a, x), train_m).backward()
        opt.step()
        model.eval()
        with torch.no_grad():
            logits = model(a, x)
            val_losses.append(loss_on(logits, val_m).item())
            val_acc = accuracy(logits, val_m)
            if val_acc > best[0]:
                best = (val_acc, accuracy(logits, test_m))
        if stopping == "kipf" and epoch > window and val_losses[-1] > np.mean(val_losses[-(window + 1) : -1]):
            break
    if stopping == "best-val":
        return Run(seed, best[1], best[0], epoch)
    return Run(seed, accuracy(logits, test_m), val_acc, epoch)


def split_for(graph: Graph, seed: int, train_per_class: int = 20, val_per_class: int = 30):
    """The per-class split that a job with training.seed = seed draws on this graph."""
    return per_class_split(graph.labels, train_per_class, val_per_class, np.random.default_rng(seed))


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("npz", nargs="?", default=str(CORA), help="a GNN-benchmark npz (default: the shared Cora)")
    p.add_argument(
        "--seeds",
        type=int,
        default=10,
        choices=range(1, 1001),
        metavar="N",
        help="seeds 0..N-1, each a new split and new weights",
    )
    p.add_argument("--features", choices=("row-normalized", "raw"), default="row-normalized")
    p.add_argument("--full-graph", action="store_true", help="keep every component (default: the largest)")
    p.add_argument("--stopping", choices=STOPPING, default="kipf")
    p.add_argument("--hidden", type=int, default=16)
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    graph = read_graph(args.npz, largest_component=not args.full_graph, features=args.features)
    print(
        f"{args.npz}: {len(graph.labels)} nodes, {graph.adj.nnz // 2} edges, features {args.features}, "
        f"{'full graph' if args.full_graph else 'largest component'}, stopping {args.stopping}"
    )
    runs = []
    for seed in range(args.seeds):
        t0 = time.perf_counter()
        run = train(graph, split_for(graph, seed), seed, hidden=args.hidden, stopping=args.stopping)
        runs.append(run)
        print(
            f"seed {seed}: test {run.test:.4f} val {run.val:.4f} epochs {run.epochs} ({time.perf_counter() - t0:.1f} s)"
        )
    tests = [r.test for r in runs]
    sd = statistics.stdev(tests) if len(tests) > 1 else 0.0
    print(f"plain GCN test accuracy: {100 * statistics.mean(tests):.2f} +- {100 * sd:.2f} % over {len(tests)} seeds")


if __name__ == "__main__":
    main()
