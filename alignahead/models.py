"""Student GNNs that expose every hidden layer's features, which the distillation loss compares.

The layers are plain PyTorch (`alignahead.layers`), with the parameter names and initialisation of
the DGL layers the students were first built from: checkpoints of every version load alike.
"""

from __future__ import annotations

from typing import Any

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from alignahead.graph import Graph, as_graph
from alignahead.layers import GATConv, GraphConv, SAGEConv
from alignahead.spec import StudentSpec


class StudentConfig(BaseModel):
    """Everything needed to rebuild a student: its spec plus the dataset's input/output sizes."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    arch: str
    in_feats: int = Field(ge=1)
    num_classes: int = Field(ge=1)
    hidden_layers: int = Field(ge=1)
    hidden_size: int = Field(ge=1)
    heads: int = Field(1, ge=1)
    out_heads: int = Field(1, ge=1)
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    attn_dropout: float = Field(0.0, ge=0.0, lt=1.0)  # GAT; 0 for checkpoints written before it existed
    residual: bool = True
    aggregator: str = "mean"

    @classmethod
    def from_spec(cls, spec: StudentSpec, in_feats: int, num_classes: int) -> StudentConfig:
        fields = spec.model_dump(exclude={"count"})
        return cls(**fields, in_feats=in_feats, num_classes=num_classes)


class Student(nn.Module):
    """A stack of graph convolutions; forward returns the logits and each hidden layer's output.

    Hidden features are taken after the activation (heads concatenated), the representation that
    the next layer consumes, as in the published code.
    """

    def __init__(self, config: StudentConfig) -> None:
        super().__init__()
        self.config = config
        # a loaded checkpoint's metadata (epoch, kind, and the dataset section and seed it was trained on)
        self.metadata: dict[str, str] = {}
        self.dropout = nn.Dropout(config.dropout)
        self.layers = nn.ModuleList()
        self.residuals = nn.ModuleList()
        width = config.in_feats
        for _ in range(config.hidden_layers):
            conv, out_width = self._conv(width, config.hidden_size, config.heads, activation=True)
            self.layers.append(conv)
            self.residuals.append(self._residual(width, out_width))
            width = out_width
        self.output, _ = self._conv(width, config.num_classes, config.out_heads, activation=False)
        self.output_residual = self._residual(width, config.num_classes)

    @property
    def arch(self) -> str:
        return self.config.arch

    @property
    def stochastic(self) -> bool:
        """Whether train mode differs from eval mode (some dropout is on)."""
        return self.config.dropout > 0 or (self.config.arch == "gat" and self.config.attn_dropout > 0)

    def _conv(self, in_dim: int, out_dim: int, heads: int, activation: bool) -> tuple[nn.Module, int]:
        c = self.config
        act = nn.functional.elu if activation else None
        if c.arch == "gat":
            conv = GATConv(in_dim, out_dim, heads, attn_drop=c.attn_dropout, activation=act)
            return conv, (out_dim * heads if activation else out_dim)
        if c.arch == "gcn":
            return GraphConv(in_dim, out_dim, activation=act), out_dim
        if c.arch == "sage":
            return SAGEConv(in_dim, out_dim, c.aggregator, activation=act), out_dim
        raise ValueError(f"unknown architecture {c.arch!r}; choose gat, gcn or sage")

    def _residual(self, in_dim: int, out_dim: int) -> nn.Module | None:
        if not self.config.residual:
            return None
        return nn.Identity() if in_dim == out_dim else nn.Linear(in_dim, out_dim, bias=False)

    def hidden_features(self, graph: Graph, feat: torch.Tensor) -> list[torch.Tensor]:
        """Each hidden layer's output [N, width] (GAT: heads concatenated), without the output layer:
        all that a peer's local structure needs."""
        h = feat
        hidden: list[torch.Tensor] = []
        for conv, res in zip(self.layers, self.residuals, strict=True):
            x = self.dropout(h)
            out = conv(graph, x).flatten(1)  # GAT: heads concatenated
            if res is not None:
                out = out + res(x)
            hidden.append(out)
            h = out
        return hidden

    def forward(self, graph: Graph, feat: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Logits [N, classes] and every hidden layer's output."""
        hidden = self.hidden_features(graph, feat)
        x = self.dropout(hidden[-1])
        logits = self.output(graph, x)
        if logits.dim() == 3:  # GAT output heads are averaged
            logits = logits.mean(1)
        if self.output_residual is not None:
            logits = logits + self.output_residual(x)
        return logits, hidden

    @torch.no_grad()
    def predict(self, graph: Graph | Any, feat: torch.Tensor | None = None) -> torch.Tensor:
        """Logits [N, num_classes] for every node of `graph` (an alignahead `Graph` or a `DGLGraph`), in
        eval mode and without gradients.

        `feat` defaults to graph.ndata['feat'] and must be float [N, config.in_feats]. The students were
        trained on graphs with symmetric edges and exactly one self-loop per node
        (`alignahead.prepare_graph` makes one's own graph so); other graphs run but predict worse.
        Single-label data: the class is logits.argmax(1); multilabel: the labels with logits > 0. The
        module's train/eval mode is restored afterwards, the graph and features are moved to its device.
        """
        graph = as_graph(graph)
        if feat is None:
            if "feat" not in graph.ndata:
                raise ValueError("the graph has no ndata['feat']; pass the node features as `feat`")
            feat = graph.ndata["feat"]
        if feat.dim() != 2 or feat.shape[0] != graph.num_nodes() or feat.shape[1] != self.config.in_feats:
            raise ValueError(
                f"features must be [num_nodes={graph.num_nodes()}, in_feats={self.config.in_feats}] "
                f"(the width this student was trained with), got {list(feat.shape)}"
            )
        device = next(self.parameters()).device
        was_training = self.training
        self.eval()
        try:
            return self(graph.to(device), feat.to(device, torch.float32))[0]
        finally:
            self.train(was_training)


def build_student(config: StudentConfig | dict[str, Any]) -> Student:
    if isinstance(config, dict):
        config = StudentConfig.model_validate(config)
    return Student(config)
