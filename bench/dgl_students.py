"""The DGL-era students, kept for the benchmark and the published loop's reference (bench/reference.py).

`alignahead.models.Student` as it was before the plain-PyTorch core: the same stack, residuals and
dropout, with the layers taken from DGL 1.1.3's `GATConv`, `GraphConv` and `SAGEConv`. Their parameter
names and initialisation are those of today's layers, so the same seed gives the same weights
(tests/test_layers.py checks each layer). It runs on `DGLGraph`s (`Graph.to_dgl()`) and needs DGL,
which installs on Python 3.11 and older.
"""

from __future__ import annotations

from torch import nn

from alignahead.graph import import_dgl
from alignahead.models import Student

dgl = import_dgl()
from dgl.nn.pytorch import GATConv, GraphConv, SAGEConv  # noqa: E402


class DglStudent(Student):
    """A `Student` whose convolutions are DGL's; forward takes a DGLGraph."""

    def _conv(self, in_dim: int, out_dim: int, heads: int, activation: bool) -> tuple[nn.Module, int]:
        c = self.config
        act = nn.functional.elu if activation else None
        if c.arch == "gat":
            conv = GATConv(in_dim, out_dim, heads, attn_drop=c.attn_dropout, activation=act, allow_zero_in_degree=True)
            return conv, (out_dim * heads if activation else out_dim)
        if c.arch == "gcn":
            return GraphConv(in_dim, out_dim, activation=act, allow_zero_in_degree=True), out_dim
        if c.arch == "sage":
            return SAGEConv(in_dim, out_dim, c.aggregator, activation=act), out_dim
        raise ValueError(f"unknown architecture {c.arch!r}; choose gat, gcn or sage")
