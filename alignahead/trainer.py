"""The training loop: k students trained together, each distilling its peers' local structure.

Read top to bottom: setup, one epoch per schedule, evaluation, state for resuming, the run loop.
Two schedules:
- alternating (the published code): in each epoch, student 1 steps over all batches against the
  others' current weights, then student 2, and so on; peers' features are recomputed, with no
  gradient and in eval mode, for every step.
- simultaneous: on each batch every student steps once, each against its peers' detached features
  from the same forward pass.
"""

from __future__ import annotations

import io
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import dgl
import torch
import torch.nn.functional as F

from alignahead.checkpoints import student_bytes
from alignahead.datasets import GraphDataset
from alignahead.models import Student, StudentConfig
from alignahead.spec import JobSpec
from alignahead.structure import distillation_loss, layer_pairs, peer_targets

STATE_FORMAT = 1
SPLITS = ("train", "val", "test")


@dataclass
class EpochMetrics:
    epoch: int  # 1-based
    student: int  # 0-based
    loss: float  # mean over the epoch's steps of task + alpha * distill
    task_loss: float
    distill_loss: float  # before alpha, averaged over peers
    train_score: float | None  # None on epochs without evaluation
    val_score: float | None
    test_score: float | None
    seconds: float


@dataclass
class Checkpoint:
    student: int
    kind: str  # "best" | "final"
    epoch: int
    score: float | None  # validation score at that epoch
    data: bytes  # a safetensors file; alignahead.load_student(data) rebuilds the student


@dataclass
class StudentSummary:
    student: int
    arch: str
    best_val: float | None = None
    best_epoch: int | None = None
    test_at_best: float | None = None


@dataclass
class TrainResult:
    cancelled: bool
    epochs_done: int
    students: list[StudentSummary]


@dataclass
class Callbacks:
    on_epoch: Callable[[list[EpochMetrics]], None] | None = None
    on_checkpoint: Callable[[Checkpoint], None] | None = None
    should_cancel: Callable[[], bool] | None = None


class _Cancelled(Exception):
    pass


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("training.device is 'cuda' but no CUDA device is available; use 'cpu' or 'auto'")
    return torch.device(name)


def score(logits: torch.Tensor, labels: torch.Tensor, multilabel: bool) -> tuple[float, float]:
    """(numerator, denominator) so that scores over several graphs pool exactly.

    Multilabel: micro-F1 = 2TP / (2TP + FP + FN); single-label: accuracy.
    """
    if multilabel:
        pred = logits > 0
        truth = labels > 0.5
        tp = (pred & truth).sum().item()
        return 2.0 * tp, 2.0 * tp + (pred & ~truth).sum().item() + (~pred & truth).sum().item()
    return (logits.argmax(1) == labels).sum().item(), float(labels.numel())


class Trainer:
    def __init__(self, spec: JobSpec, dataset: GraphDataset, callbacks: Callbacks | None = None) -> None:
        self.spec = spec
        self.dataset = dataset
        self.callbacks = callbacks or Callbacks()
        self.device = resolve_device(spec.training.device)
        t = spec.training
        torch.manual_seed(t.seed)  # model initialisation depends on the seed alone
        self.students: list[Student] = [
            Student(StudentConfig.from_spec(s, dataset.num_features, dataset.num_classes)).to(self.device)
            for s in spec.expanded_students()
        ]
        self.optimizers = [self._optimizer(m) for m in self.students]
        self.shuffle = torch.Generator().manual_seed(t.seed)
        self.pairs = layer_pairs(spec.distillation.strategy, spec.students[0].hidden_layers)
        self.epoch = 0
        self.summaries = [StudentSummary(i, m.arch) for i, m in enumerate(self.students)]
        self.train_graphs = [g.to(self.device) for g in dataset.train]
        self.eval_sets = self._eval_sets()

    def _optimizer(self, model: Student) -> torch.optim.Optimizer:
        t = self.spec.training
        kind = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW, "sgd": torch.optim.SGD}[t.optimizer]
        return kind(model.parameters(), lr=t.lr, weight_decay=t.weight_decay)

    def _eval_sets(self) -> list[tuple[dgl.DGLGraph, dict[str, torch.Tensor]]]:
        """Graphs to run once per evaluation, each with the masks of the splits it serves."""
        d = self.dataset
        if len(d.train) == 1 and d.train[0] is d.val[0] is d.test[0]:  # one graph, split by masks
            g = d.train[0].to(self.device)
            return [(g, {s: g.ndata[f"{s}_mask"] for s in SPLITS})]
        sets = []
        for split, graphs in zip(SPLITS, (d.train, d.val, d.test), strict=True):
            if graphs:
                g = dgl.batch(graphs).to(self.device)
                sets.append((g, {split: g.ndata[f"{split}_mask"]}))
        return sets

    # --- one step -----------------------------------------------------------------------------

    def _task_loss(self, logits: torch.Tensor, graph: dgl.DGLGraph) -> torch.Tensor:
        mask = graph.ndata["train_mask"]
        labels = graph.ndata["label"][mask]
        if self.dataset.multilabel:
            return F.binary_cross_entropy_with_logits(logits[mask], labels)
        return F.cross_entropy(logits[mask], labels)

    def _batches(self) -> list[dgl.DGLGraph]:
        graphs, size = self.train_graphs, self.spec.training.batch_size
        if len(graphs) == 1:
            return graphs
        order = torch.randperm(len(graphs), generator=self.shuffle).tolist()
        return [dgl.batch([graphs[j] for j in order[i : i + size]]) for i in range(0, len(order), size)]

    def _step(self, index: int, loss: torch.Tensor) -> None:
        if self.callbacks.should_cancel and self.callbacks.should_cancel():
            raise _Cancelled
        opt = self.optimizers[index]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    # --- one epoch ----------------------------------------------------------------------------

    def _epoch_alternating(self) -> list[tuple[float, float, float, float]]:
        alpha, tau = self.spec.distillation.alpha, self.spec.distillation.tau
        out = []
        for i, model in enumerate(self.students):
            t0 = time.perf_counter()
            sums = [0.0, 0.0, 0.0]
            batches = self._batches()
            for graph in batches:
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
                distill = distillation_loss(graph, hidden, peers, self.pairs, tau)
                loss = task + alpha * distill
                self._step(i, loss)
                for k, v in enumerate((loss, task, distill)):
                    sums[k] += v.item()
            n = len(batches)
            out.append((sums[0] / n, sums[1] / n, sums[2] / n, time.perf_counter() - t0))
        return out

    def _epoch_simultaneous(self) -> list[tuple[float, float, float, float]]:
        alpha, tau = self.spec.distillation.alpha, self.spec.distillation.tau
        k = len(self.students)
        t0 = time.perf_counter()
        sums = [[0.0, 0.0, 0.0] for _ in range(k)]
        batches = self._batches()
        for graph in batches:
            feat = graph.ndata["feat"]
            outs = []
            for model in self.students:
                model.train()
                outs.append(model(graph, feat))
            targets = [peer_targets(graph, hidden, self.pairs, tau) for _, hidden in outs] if self.pairs else []
            for i, (logits, hidden) in enumerate(outs):
                peers = [targets[j] for j in range(len(targets)) if j != i]
                task = self._task_loss(logits, graph)
                distill = distillation_loss(graph, hidden, peers, self.pairs, tau)
                loss = task + alpha * distill
                self._step(i, loss)  # students share no graph: peers were detached
                for m, v in enumerate((loss, task, distill)):
                    sums[i][m] += v.item()
        n, seconds = len(batches), time.perf_counter() - t0
        return [(s[0] / n, s[1] / n, s[2] / n, seconds) for s in sums]

    # --- evaluation ---------------------------------------------------------------------------

    @torch.no_grad()
    def evaluate(self, index: int) -> dict[str, float | None]:
        model = self.students[index].eval()
        totals = {s: [0.0, 0.0] for s in SPLITS}
        for graph, masks in self.eval_sets:
            logits = model(graph, graph.ndata["feat"])[0]
            for split, mask in masks.items():
                num, den = score(logits[mask], graph.ndata["label"][mask], self.dataset.multilabel)
                totals[split][0] += num
                totals[split][1] += den
        return {s: (num / den if den else None) for s, (num, den) in totals.items()}

    @torch.no_grad()
    def predict(self, index: int, graph: dgl.DGLGraph) -> torch.Tensor:
        model = self.students[index].eval()
        graph = graph.to(self.device)
        return model(graph, graph.ndata["feat"])[0]

    # --- state for resuming -------------------------------------------------------------------

    def state_dict(self) -> dict:
        return {
            "format": STATE_FORMAT,
            "spec": self.spec.model_dump_json(),
            "epoch": self.epoch,
            "students": [m.state_dict() for m in self.students],
            "optimizers": [o.state_dict() for o in self.optimizers],
            "torch_rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state_all() if self.device.type == "cuda" else [],
            "shuffle_rng": self.shuffle.get_state(),
            "best": [[s.best_val, s.best_epoch, s.test_at_best] for s in self.summaries],
        }

    def load_state_dict(self, state: dict) -> None:
        if state.get("format") != STATE_FORMAT:
            raise ValueError(f"unsupported training-state format {state.get('format')!r}")
        if JobSpec.model_validate_json(state["spec"]) != self.spec:
            raise ValueError("this training state belongs to a different job spec")
        for model, sd in zip(self.students, state["students"], strict=True):
            model.load_state_dict(sd)
        for opt, sd in zip(self.optimizers, state["optimizers"], strict=True):
            opt.load_state_dict(sd)
        torch.set_rng_state(state["torch_rng"])
        if state["cuda_rng"] and self.device.type == "cuda":
            torch.cuda.set_rng_state_all(state["cuda_rng"])
        self.shuffle.set_state(state["shuffle_rng"])
        for summary, (val, ep, test) in zip(self.summaries, state["best"], strict=True):
            summary.best_val, summary.best_epoch, summary.test_at_best = val, ep, test
        self.epoch = state["epoch"]

    def state_bytes(self) -> bytes:
        buf = io.BytesIO()
        torch.save(self.state_dict(), buf)
        return buf.getvalue()

    def load_state_bytes(self, data: bytes) -> None:
        # weights_only: a state file is data, never code
        self.load_state_dict(torch.load(io.BytesIO(data), map_location=self.device, weights_only=True))

    # --- the run loop -------------------------------------------------------------------------

    def _emit(self, index: int, kind: str, val: float | None) -> None:
        if self.callbacks.on_checkpoint:
            model = self.students[index]
            # the dataset section and seed rebuild the graph it was trained on: alignahead.load_graph
            meta = {"epoch": str(self.epoch), "kind": kind, "dataset": self.spec.dataset.model_dump_json()}
            data = student_bytes(model, {**meta, "seed": str(self.spec.training.seed)})
            self.callbacks.on_checkpoint(Checkpoint(index, kind, self.epoch, val, data))

    def run(self, stop_after: int | None = None) -> TrainResult:
        """Train from the current epoch to the spec's last (or to `stop_after`), or until cancelled."""
        t = self.spec.training
        last = t.epochs if stop_after is None else min(stop_after, t.epochs)
        run_epoch = (
            self._epoch_alternating if self.spec.distillation.schedule == "alternating" else self._epoch_simultaneous
        )
        last_vals: list[float | None] | None = None  # the final epoch is always evaluated
        try:
            while self.epoch < last:
                losses = run_epoch()
                self.epoch += 1
                evaluate = self.epoch % t.eval_every == 0 or self.epoch == t.epochs
                rows = []
                for i, (loss, task, distill, seconds) in enumerate(losses):
                    scores = self.evaluate(i) if evaluate else dict.fromkeys(SPLITS)
                    summary = self.summaries[i]
                    val = scores["val"]
                    if val is not None and (summary.best_val is None or val > summary.best_val):
                        summary.best_val, summary.best_epoch, summary.test_at_best = val, self.epoch, scores["test"]
                        self._emit(i, "best", val)
                    rows.append(
                        EpochMetrics(self.epoch, i, loss, task, distill, scores["train"], val, scores["test"], seconds)
                    )
                last_vals = [r.val_score for r in rows]
                if self.callbacks.on_epoch:
                    self.callbacks.on_epoch(rows)
            if self.epoch == t.epochs and self.callbacks.on_checkpoint:
                for i in range(len(self.students)):
                    self._emit(i, "final", last_vals[i] if last_vals else self.evaluate(i)["val"])
        except _Cancelled:
            return TrainResult(True, self.epoch, self.summaries)
        return TrainResult(False, self.epoch, self.summaries)


def fit(spec: JobSpec, dataset: GraphDataset, callbacks: Callbacks | None = None) -> TrainResult:
    return Trainer(spec, dataset, callbacks).run()


@dataclass
class History:
    """Collects metric rows in memory; handy in notebooks and tests."""

    rows: list[EpochMetrics] = field(default_factory=list)

    def __call__(self, rows: list[EpochMetrics]) -> None:
        self.rows.extend(rows)
