"""The alternating schedule's one optimisation: each student's peer-layer distributions, computed once.

In the alternating schedule a student's weights change only during its own pass, so the distributions
its peers learn from (its layers' local structure on each training graph, no gradient, eval mode)
stay valid from the end of its pass to the start of its next one. `PeerCache` computes them then,
once per training graph (a batch's targets are its graphs' concatenated in batch order: a batch is a
disjoint union), instead of once per step of every other student: O(k) forwards per epoch, not O(k^2).

On one-graph data the same forward gives two more things:
- the student's evaluation logits for the epoch (its weights do not change before the evaluation);
- for a student without dropout, whose train and eval modes compute the same thing, the forward can
  be run with gradient and kept as the student's next training forward: one forward per student per
  epoch, like training alone. It holds k - 1 students' activations at once, so it is done only where
  what autograd saved in the student's first training forward, times k - 1, fits `reuse_budget` bytes.

Tested against a loop that recomputes every target at every step (tests/test_trainer_cache.py).
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager

import torch

from alignahead.graph import Graph
from alignahead.models import Student
from alignahead.structure import Target, concat_targets, peer_targets

Forward = tuple[torch.Tensor, list[torch.Tensor]]  # logits and hidden layers


class saved_bytes:  # noqa: N801 - used as a context manager, like torch's own
    """Counts the bytes of the tensors autograd saves for the backward inside the block (each storage
    once): what keeping that forward's graph costs."""

    def __init__(self) -> None:
        self._storages: dict[int, int] = {}
        self._hooks = torch.autograd.graph.saved_tensors_hooks(self._pack, lambda t: t)

    def _pack(self, t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        self._storages[storage.data_ptr()] = storage.nbytes()
        return t

    @property
    def total(self) -> int:
        return sum(self._storages.values())

    def __enter__(self) -> saved_bytes:
        self._hooks.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self._hooks.__exit__(*exc)


class PeerCache:
    """Per student: its targets on every training graph (None: stale), its evaluation logits, its kept
    forward; and whether keeping forwards fits the budget (decided on its first training forward)."""

    def __init__(
        self,
        students: list[Student],
        graphs: list[Graph],
        pairs: list[tuple[int, int]],
        tau: float | str,
        *,
        one_graph: bool,
        reuse_budget: float,
        autocast: Callable[[], AbstractContextManager],
    ) -> None:
        self.students, self.graphs, self.pairs, self.tau = students, graphs, pairs, tau
        self.one_graph = one_graph
        self.reuse_budget = reuse_budget
        self.autocast = autocast  # the students' precision (training.precision)
        self._targets: list[list[dict[int, Target]] | None] = [None] * len(students)
        self._eval_logits: dict[int, torch.Tensor] = {}
        self._kept: dict[int, Forward] = {}
        self._keeps: dict[int, bool] = {}

    def targets(self, index: int, part: list[int]) -> dict[int, Target]:
        """Student `index`'s targets for a batch of the training graphs `part`, computed if stale."""
        if self._targets[index] is None:  # first epoch, or just resumed
            self.refresh(index, evaluated=False)
        cache = self._targets[index]
        assert cache is not None
        return concat_targets([cache[g] for g in part])

    def training_forward(self, index: int, graph: Graph) -> Forward:
        """Student `index`'s training forward on `graph`: the one its last refresh kept, else a fresh one
        (the first, for a student that could keep them, measured against the budget)."""
        model = self.students[index].train()
        kept = self._kept.pop(index, None)
        if kept is not None:
            return kept
        if index not in self._keeps and self._reusable(model):
            with saved_bytes() as saved, self.autocast():  # the first training forward decides, for the run
                out = model(graph, graph.ndata["feat"])
            self._keeps[index] = saved.total * (len(self.students) - 1) <= self.reuse_budget
            return out
        with self.autocast():
            return model(graph, graph.ndata["feat"])

    def stepped(self, index: int, *, evaluated: bool) -> None:
        """Student `index` finished its pass: its targets are stale; recompute them with its new weights,
        keeping its logits too when the epoch is `evaluated` (and the forward, where it may)."""
        self._targets[index] = None
        self._eval_logits.pop(index, None)
        if self.pairs:
            self.refresh(index, evaluated)

    def refresh(self, index: int, evaluated: bool) -> None:
        """Compute student `index`'s targets on every training graph with its current weights."""
        model = self.students[index]
        if self._keeps.get(index, False):
            g = self.graphs[0]  # train mode == eval mode here: the refresh is the next training forward
            with self.autocast():
                logits, hidden = self._kept[index] = model.train()(g, g.ndata["feat"])
            self._targets[index] = [peer_targets(g, hidden, self.pairs, self.tau)]
            if evaluated:
                self._eval_logits[index] = logits.detach()
            return
        model.eval()
        targets = []
        with torch.no_grad():
            for g in self.graphs:
                with self.autocast():
                    if evaluated and self.one_graph:
                        self._eval_logits[index], hidden = model(g, g.ndata["feat"])
                    else:
                        hidden = model.hidden_features(g, g.ndata["feat"])  # the output layer is not needed
                targets.append(peer_targets(g, hidden, self.pairs, self.tau))
        self._targets[index] = targets

    def eval_logits(self, index: int) -> torch.Tensor | None:
        """The logits its last refresh computed on the one graph, if they are of its current weights."""
        return self._eval_logits.pop(index, None)

    def clear(self) -> None:
        """Forget everything (new weights were loaded)."""
        self._targets = [None] * len(self.students)
        self._eval_logits.clear()
        self._kept.clear()

    def new_epoch(self) -> None:
        self._eval_logits.clear()

    def keeps_forward(self, index: int) -> bool:
        """Whether student `index`'s refresh forwards are kept as its next training forwards."""
        return self._keeps.get(index, False)

    def _reusable(self, model: Student) -> bool:
        """Whether a refresh forward can stand in for the next training forward: one graph (the same
        batch every step), a student with no randomness in train mode, and a budget to keep it in."""
        return self.one_graph and not model.stochastic and self.reuse_budget > 0 and bool(self.pairs)
