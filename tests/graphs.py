"""Small graphs the library's tests build (random multigraphs, with or without self-loops, rings), and
the mark for tests that need DGL as their oracle. A plain module: tests import it by name, which a
conftest cannot be (tests/ and tests/service/ each have one)."""

from __future__ import annotations

import importlib.util

import pytest
import torch

from alignahead.graph import Graph

HAS_DGL = importlib.util.find_spec("dgl") is not None
needs_dgl = pytest.mark.skipif(not HAS_DGL, reason="DGL is not installed (it has no wheel for Python 3.12+)")


def random_graph(n: int, e: int, seed: int, *, self_loops: bool = True, isolated: int = 0) -> Graph:
    """`e` random edges (repeats allowed: a multigraph) among n nodes, plus a self-loop per node when
    `self_loops`; the last `isolated` nodes receive no edge at all (zero in-degree)."""
    gen = torch.Generator().manual_seed(seed)
    src = torch.randint(0, n, (e,), generator=gen)
    dst = torch.randint(0, n - isolated, (e,), generator=gen)
    if self_loops:
        loops = torch.arange(n - isolated)
        src, dst = torch.cat([src, loops]), torch.cat([dst, loops])
    return Graph(src, dst, n)


def symmetric(graph: Graph) -> Graph:
    """Both directions of every edge once, no duplicates, one self-loop per node: a training graph."""
    from alignahead.inference import prepare_graph

    return prepare_graph(graph, torch.zeros(graph.num_nodes(), 1))


def ring(n: int = 12) -> Graph:
    """A cycle in both directions with a self-loop per node."""
    v = torch.arange(n)
    return Graph(torch.cat([v, (v + 1) % n, v]), torch.cat([(v + 1) % n, v, v]), n)
