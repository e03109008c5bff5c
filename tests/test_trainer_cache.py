"""The optimised schedules give exactly the numbers of the plain loops they replace.

`Recomputing` is the trainer as it was before the peer-target cache: in `alternating`, every peer's
forward and distributions are recomputed for every step of every other student, on the batch itself;
in `simultaneous`, each peer's targets are computed a second time from its detached features. Both
use the same structure functions, so any difference comes from the caching alone.

One caveat, of floating point and not of the maths: PyTorch's CPU kernels for elementwise
transcendental functions (`pow` in GCN's degree norm, `exp`, ELU's `expm1`) compute the elements of
an array in SIMD lanes except a short scalar tail, and the two paths can round the same input 1 ulp
apart. A graph's elements sit at other offsets alone than inside a batch, so on graphs of arbitrary
sizes the cached targets can differ from the batched forward in the last bit of a few elements. On
graphs whose node and edge counts are multiples of 64 no array has a tail in either layout, and the
cache must then be exact; on arbitrary graphs it must agree to float32 rounding.
"""

from __future__ import annotations

import pytest
import torch

from alignahead import JobSpec
from alignahead.datasets import GraphDataset, load_dataset
from alignahead.graph import Graph
from alignahead.kernels import compile_mode_set
from alignahead.structure import distillation_loss, layer_distances, peer_targets, student_layers
from alignahead.trainer import Callbacks, History, StudentEpoch, Trainer


class Recomputing(Trainer):
    def _epoch_alternating(self) -> dict[int, StudentEpoch]:
        alpha, tau = self.spec.distillation.alpha, self.spec.distillation.tau
        out = []
        for i, model in enumerate(self.students):
            sums = [0.0, 0.0, 0.0]
            batches = self._batches()
            for _, graph in batches:
                feat = graph.ndata["feat"]
                peers = []
                if self.pairs:
                    for j, peer in enumerate(self.students):
                        if j != i:
                            peer.eval()
                            with torch.no_grad():
                                peers.append(peer_targets(graph, peer(graph, feat)[1], self.pairs, tau))
                model.train()
                logits, hidden = model(graph, feat)
                task = self._task_loss(logits, graph)
                own = layer_distances(graph, hidden, student_layers(self.pairs))
                distill = distillation_loss(graph, own, peers, self.pairs)
                loss = task + alpha * distill
                self._step(i, loss)
                for k, v in enumerate((loss, task, distill)):
                    sums[k] += v.item()
            n = len(batches)
            out.append(StudentEpoch(sums[0] / n, sums[1] / n, sums[2] / n, 0.0))
        return dict(enumerate(out))

    def _epoch_simultaneous(self) -> dict[int, StudentEpoch]:
        alpha, tau = self.spec.distillation.alpha, self.spec.distillation.tau
        sums = [[0.0, 0.0, 0.0] for _ in self.students]
        batches = self._batches()
        for _, graph in batches:
            feat = graph.ndata["feat"]
            outs = []
            for i, model in enumerate(self.students):
                with self.randomness.of(i):  # each student's own dropout stream, as the trainer draws it
                    outs.append(model.train()(graph, feat))
            targets = [peer_targets(graph, hidden, self.pairs, tau) for _, hidden in outs]
            for i, (logits, hidden) in enumerate(outs):
                peers = [targets[j] for j in range(len(outs)) if j != i and self.pairs]
                task = self._task_loss(logits, graph)
                own = layer_distances(graph, hidden, student_layers(self.pairs))
                distill = distillation_loss(graph, own, peers, self.pairs)
                loss = task + alpha * distill
                self._step(i, loss)
                for m, v in enumerate((loss, task, distill)):
                    sums[i][m] += v.item()
        n = len(batches)
        return {i: StudentEpoch(s[0] / n, s[1] / n, s[2] / n, 0.0) for i, s in enumerate(sums)}


def multigraph_spec(schedule: str, strategy: str = "alignahead", dataset: dict | None = None) -> JobSpec:
    """Several graphs in shuffled minibatches, mixed students, dropout: every source of randomness."""
    return JobSpec.model_validate(
        {
            "dataset": dataset
            or {
                "name": "synthetic",
                "synthetic": {"num_nodes": 90, "num_features": 12, "num_classes": 3, "num_graphs": 7},
            },
            "students": [
                {"arch": "gat", "hidden_layers": 3, "hidden_size": 8, "heads": 2, "dropout": 0.3},
                {"arch": "gcn", "hidden_layers": 3, "hidden_size": 12, "dropout": 0.2},
                {"arch": "sage", "hidden_layers": 3, "hidden_size": 10, "dropout": 0.1},
            ],
            "distillation": {"strategy": strategy, "schedule": schedule, "tau": 3.0, "alpha": 2.0},
            "training": {"epochs": 4, "batch_size": 2, "lr": 0.01, "device": "cpu", "seed": 5},
        }
    )


def aligned_graphs(count: int = 7, n: int = 64, features: int = 12, classes: int = 3) -> GraphDataset:
    """Circulant graphs (offsets +-1, +-7 and a self-loop: 5 in-edges per node) of 64 nodes and 320
    edges each, random features and labels: every array's length is a multiple of 64."""
    gen = torch.Generator().manual_seed(11)
    graphs = []
    for _ in range(count):
        v = torch.arange(n)
        src = torch.cat([(v + o) % n for o in (0, 1, -1, 7, -7)])
        g = Graph(src, v.repeat(5), n)
        g.ndata["feat"] = torch.randn(n, features, generator=gen)
        g.ndata["label"] = torch.randint(0, classes, (n,), generator=gen)
        graphs.append(g)
    for split, gs in (("train", graphs[:5]), ("val", graphs[5:6]), ("test", graphs[6:])):
        for g in gs:
            for name in ("train", "val", "test"):
                g.ndata[f"{name}_mask"] = torch.full((n,), name == split)
    return GraphDataset("aligned", features, classes, False, graphs[:5], graphs[5:6], graphs[6:])


def train(
    cls: type[Trainer], spec: JobSpec, compiled: bool, dataset: GraphDataset | None = None, reuse_mb: float = 0.0
) -> tuple[list, list]:
    history = History()
    dataset = dataset or load_dataset(spec.dataset, seed=spec.training.seed)
    with compile_mode_set("on" if compiled else "off"):
        result = cls(spec, dataset, Callbacks(history), reuse_forward_mb=reuse_mb).run()
    rows = [(r.epoch, r.student, r.loss, r.task_loss, r.distill_loss, r.val_score, r.test_score) for r in history.rows]
    return rows, [s.__dict__ for s in result.students]


@pytest.mark.parametrize("compiled", [False, True], ids=["eager", "compiled"])
@pytest.mark.parametrize("schedule", ["alternating", "simultaneous"])
@pytest.mark.parametrize("strategy", ["alignahead", "one-to-one"])
def test_cached_schedules_equal_the_recomputing_loops(schedule: str, strategy: str, compiled: bool) -> None:
    spec = multigraph_spec(schedule, strategy)
    dataset = aligned_graphs()
    fast_rows, fast_summary = train(Trainer, spec, compiled, dataset)
    slow_rows, slow_summary = train(Recomputing, spec, compiled, dataset)
    assert all(r[4] > 0 for r in fast_rows)  # distillation is really in play
    assert fast_rows == slow_rows  # exact: every loss of every student and epoch, and every score
    assert fast_summary == slow_summary


@pytest.mark.parametrize("schedule", ["alternating", "simultaneous"])
def test_on_graphs_of_any_size_the_cache_agrees_to_rounding(schedule: str) -> None:
    spec = multigraph_spec(schedule)
    fast_rows, fast_summary = train(Trainer, spec, True)
    slow_rows, slow_summary = train(Recomputing, spec, True)
    assert len(fast_rows) == len(slow_rows) == 4 * 3
    for fast, slow in zip(fast_rows, slow_rows, strict=True):
        assert fast[:2] == slow[:2]
        assert fast[2:5] == pytest.approx(slow[2:5], rel=1e-5, abs=1e-9)
    assert fast_summary == slow_summary  # scores: the same predictions


@pytest.mark.parametrize("dropout", [0.0, 0.2])
def test_one_graph_alternating_equals_the_recomputing_loop(dropout: float) -> None:
    """One graph: with dropout each refresh is its own eval-mode forward; without, and where it fits
    reuse_forward_mb, the refresh forward is also the student's next training forward: the numbers must
    not change."""
    spec = multigraph_spec("alternating", dataset={"name": "synthetic", "synthetic": {"num_nodes": 150}})
    students = [{**s.model_dump(), "dropout": dropout} for s in spec.students]
    spec = spec.model_copy(update={"students": [type(spec.students[0])(**s) for s in students]})
    dataset = load_dataset(spec.dataset, seed=spec.training.seed)
    for budget_mb, kept in ((1000.0, dropout == 0), (0.001, False), (0.0, False)):  # fits; too small; off
        trainer = Trainer(spec, dataset, reuse_forward_mb=budget_mb)
        trainer.run(stop_after=1)
        assert all(trainer.peers.keeps_forward(i) == kept for i in range(3))  # the path under test is taken
    expected = train(Recomputing, spec, True)
    assert train(Trainer, spec, True, reuse_mb=1000.0) == expected
    assert train(Trainer, spec, True, reuse_mb=0.001) == expected
    assert train(Trainer, spec, True, reuse_mb=0.0) == expected


@pytest.mark.parametrize("schedule", ["alternating", "simultaneous"])
def test_tau_auto_cached_equals_the_recomputing_loop(schedule: str) -> None:
    """tau 'auto' is taken per graph of a batch, so the per-graph cache gives the batch's numbers."""
    spec = multigraph_spec(schedule)
    spec = spec.model_copy(update={"distillation": spec.distillation.model_copy(update={"tau": "auto"})})
    dataset = aligned_graphs()
    fast, slow = train(Trainer, spec, True, dataset), train(Recomputing, spec, True, dataset)
    assert all(r[4] > 1e-3 for r in fast[0])
    assert fast == slow
