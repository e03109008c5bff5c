"""Graph convolutions in plain PyTorch on `alignahead.graph.Graph`: GAT, GCN and GraphSAGE.

Each layer computes what DGL's layer of the same name computes (DGL 1.1: `GATConv`, `GraphConv` with
norm 'both', `SAGEConv`), with the same parameter names, shapes and initialisation (the same random
draws in the same order), so that checkpoints written by the DGL-era students load and predict the
same logits, and a seed gives the same students as before. The heavy parts (sums of messages, the
attention softmax, segment maxima) are the kernels of `alignahead.kernels`, compiled or eager.
Tested against DGL's layers where DGL is installed (tests/test_layers.py).

Low-precision inputs (autocast) are aggregated in float32: a sum over a node's in-edges in bfloat16
loses most of its digits on high-degree nodes.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from alignahead import kernels
from alignahead.graph import Graph
from alignahead.precision import widen

Activation = Callable[[torch.Tensor], torch.Tensor] | None


def _degree_norm(graph: Graph, which: str, like: torch.Tensor) -> torch.Tensor:
    """deg^-1/2 per node [N, 1] of the in- or out-degrees, at least 1 (GCN's symmetric normalisation)."""

    def make(g: Graph) -> torch.Tensor:
        degrees = g.in_degrees() if which == "in" else g.out_degrees()
        return degrees.to(like.dtype).clamp(min=1).pow(-0.5).unsqueeze(-1)

    return graph.cached(f"norm-{which}-{like.dtype}", make)


class GATConv(nn.Module):
    """Graph attention (Velickovic et al. 2018), as DGL's `GATConv` without its residual:
    x [N, in_feats] -> [N, num_heads, out_feats].

    z = x W, split into heads; e_uv = leaky_relu(a_l . z_u + a_r . z_v); alpha = softmax over v's
    in-edges of e; out_v = sum_u alpha_uv z_u + bias.
    Parameters: fc.weight [H * out, in], attn_l and attn_r [1, H, out], bias [H * out].
    """

    def __init__(
        self,
        in_feats: int,
        out_feats: int,
        num_heads: int,
        attn_drop: float = 0.0,
        negative_slope: float = 0.2,
        activation: Activation = None,
    ) -> None:
        super().__init__()
        self.num_heads, self.out_feats, self.negative_slope = num_heads, out_feats, negative_slope
        self.fc = nn.Linear(in_feats, out_feats * num_heads, bias=False)
        self.attn_l = nn.Parameter(torch.empty(1, num_heads, out_feats))
        self.attn_r = nn.Parameter(torch.empty(1, num_heads, out_feats))
        self.attn_drop = nn.Dropout(attn_drop)
        self.bias = nn.Parameter(torch.empty(num_heads * out_feats))
        self.activation = activation
        self.reset_parameters()

    def reset_parameters(self) -> None:
        gain = nn.init.calculate_gain("relu")
        nn.init.xavier_normal_(self.fc.weight, gain=gain)
        nn.init.xavier_normal_(self.attn_l, gain=gain)
        nn.init.xavier_normal_(self.attn_r, gain=gain)
        nn.init.constant_(self.bias, 0)

    def forward(self, graph: Graph, x: torch.Tensor) -> torch.Tensor:
        c = kernels.csr(graph)
        z = widen(self.fc(x)).view(-1, self.num_heads, self.out_feats)
        el = (z * self.attn_l).sum(-1)  # [N, H]
        er = (z * self.attn_r).sum(-1)
        alpha = self.attn_drop(kernels.GAT_ATTENTION(c, el, er, self.negative_slope))  # [E, H]
        out = kernels.spmm(c, alpha, z) + self.bias.view(1, self.num_heads, self.out_feats)
        return self.activation(out) if self.activation else out


class GraphConv(nn.Module):
    """Graph convolution (Kipf & Welling 2017), as DGL's `GraphConv` with norm 'both':
    x [N, in_feats] -> [N, out_feats].

    out_v = d_in(v)^-1/2 * sum over u -> v of d_out(u)^-1/2 x_u, times W, plus bias (degrees at least
    1; W applied before the sum when that is narrower, as DGL does). Parameters: weight [in, out],
    bias [out].
    """

    def __init__(self, in_feats: int, out_feats: int, activation: Activation = None) -> None:
        super().__init__()
        self.in_feats, self.out_feats = in_feats, out_feats
        self.weight = nn.Parameter(torch.empty(in_feats, out_feats))
        self.bias = nn.Parameter(torch.empty(out_feats))
        self.activation = activation
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.xavier_uniform_(self.weight)
        nn.init.zeros_(self.bias)

    def forward(self, graph: Graph, x: torch.Tensor) -> torch.Tensor:
        c = kernels.csr(graph)
        h = widen(x) * _degree_norm(graph, "out", widen(x))
        if self.in_feats > self.out_feats:
            out = kernels.spmm(c, None, widen(h @ self.weight))
        else:
            out = widen(kernels.spmm(c, None, h) @ self.weight)
        out = out * _degree_norm(graph, "in", out) + self.bias
        return self.activation(out) if self.activation else out


class SAGEConv(nn.Module):
    """GraphSAGE (Hamilton et al. 2017), as DGL's `SAGEConv`: x [N, in_feats] -> [N, out_feats].

    mean: out_v = W_self x_v + W_neigh mean_u x_u; gcn: out_v = W_neigh (x_v + sum_u x_u) / (deg + 1)
    + bias; pool: out_v = W_self x_v + W_neigh max_u relu(W_pool x_u + b); lstm: the last hidden state
    of an LSTM run over v's in-neighbours in edge order. A node without in-edges aggregates zeros.
    Parameters (by aggregator): fc_pool, lstm, fc_neigh.weight [out, in], fc_self [out, in] with bias,
    or bias [out] for gcn.
    """

    def __init__(self, in_feats: int, out_feats: int, aggregator: str = "mean", activation: Activation = None):
        super().__init__()
        if aggregator not in ("mean", "gcn", "pool", "lstm"):
            raise ValueError(f"unknown GraphSAGE aggregator {aggregator!r}; choose mean, gcn, pool or lstm")
        self.in_feats, self.out_feats, self.aggregator = in_feats, out_feats, aggregator
        self.activation = activation
        if aggregator == "pool":
            self.fc_pool = nn.Linear(in_feats, in_feats)
        if aggregator == "lstm":
            self.lstm = nn.LSTM(in_feats, in_feats, batch_first=True)
        self.fc_neigh = nn.Linear(in_feats, out_feats, bias=False)
        if aggregator == "gcn":
            self.bias = nn.Parameter(torch.zeros(out_feats))
        else:
            self.fc_self = nn.Linear(in_feats, out_feats, bias=True)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        gain = nn.init.calculate_gain("relu")
        if self.aggregator == "pool":
            nn.init.xavier_uniform_(self.fc_pool.weight, gain=gain)
        if self.aggregator == "lstm":
            self.lstm.reset_parameters()
        if self.aggregator != "gcn":
            nn.init.xavier_uniform_(self.fc_self.weight, gain=gain)
        nn.init.xavier_uniform_(self.fc_neigh.weight, gain=gain)

    def forward(self, graph: Graph, x: torch.Tensor) -> torch.Tensor:
        c = kernels.csr(graph)
        first = self.in_feats > self.out_feats  # W_neigh before the aggregation when that is narrower
        if self.aggregator in ("mean", "gcn"):
            h = widen(self.fc_neigh(x)) if first else widen(x)
            total = kernels.spmm(c, None, h)
            degrees = c.lengths.to(total.dtype).unsqueeze(-1)
            if self.aggregator == "mean":
                neigh = total / degrees.clamp(min=1)
            else:
                neigh = (total + h) / (degrees + 1)
            if not first:
                neigh = self.fc_neigh(neigh)
        elif self.aggregator == "pool":
            h = widen(torch.relu(self.fc_pool(x)))
            neigh = self.fc_neigh(kernels.SEGMENT_MAX(c, h[c.src]))
        else:
            neigh = self.fc_neigh(self._lstm_aggregate(graph, x))
        out = neigh + self.bias if self.aggregator == "gcn" else self.fc_self(x) + neigh
        return self.activation(out) if self.activation else out

    def _lstm_aggregate(self, graph: Graph, x: torch.Tensor) -> torch.Tensor:
        """Per node, the LSTM's last hidden state over its in-neighbours' features in edge order; nodes
        of equal in-degree run as one batch (DGL's degree bucketing), those of none get zeros."""
        out = x.new_zeros(x.shape[0], self.in_feats)
        for nodes, edges in _degree_buckets(graph):
            messages = x[graph.src[edges]]  # [n, d, in]
            zeros = messages.new_zeros(1, len(nodes), self.in_feats)
            _, (last, _) = self.lstm(messages, (zeros, zeros))
            out = out.index_copy(0, nodes, last.squeeze(0).to(out.dtype))
        return out


def _degree_buckets(graph: Graph) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(nodes [n], their in-edges [n, d]) for each in-degree d > 0, built once per graph."""

    def make(g: Graph) -> list[tuple[torch.Tensor, torch.Tensor]]:
        degrees = g.in_degrees()
        buckets = []
        for d in torch.unique(degrees[degrees > 0]).tolist():
            nodes = torch.nonzero(degrees == d).flatten()
            edges = g.indptr[nodes].unsqueeze(1) + torch.arange(d, device=g.device)
            buckets.append((nodes, edges))
        return buckets

    return graph.cached("degree-buckets", make)
