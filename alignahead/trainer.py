"""The training loop: k students trained together, each distilling its peers' local structure.

Read top to bottom: setup, one epoch per schedule, evaluation, state for resuming, the run loop.
Two schedules:
- alternating (the published code): in each epoch, student 1 steps over all batches against the
  others' current weights, then student 2, and so on. A peer's weights change only when that peer
  steps, so its target distributions (no gradient, eval mode) are computed once per training graph
  right after its own pass and cached: one no-grad forward per student per epoch, however many
  students and batches. A batch is a disjoint union of graphs, so its targets are the cached
  per-graph ones concatenated in batch order (tested against the uncached loop: equal, to the last bit
  where no float kernel rounds by position; see tests/test_trainer_cache.py). On a one-graph dataset,
  in an epoch that is evaluated, that forward also gives the student's evaluation logits; and where
  the student has no dropout, train and eval mode compute the same thing, so that forward is run with
  gradient and kept as the student's next training forward: one forward per student per epoch, for
  k - 1 students' activations held at once, where they fit `reuse_forward_mb` (alignahead.runtime).
- simultaneous: on each batch every student steps once, each against its peers' detached
  distributions from the same forward pass. Each (student, layer) distribution is computed once per
  step, with gradient for the student's own loss and, detached, as its peers' target.

Per-step losses stay on the device and are read once per epoch (no `.item()` sync per step).
"""

from __future__ import annotations

import io
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import dgl
import torch
import torch.nn.functional as F

from alignahead.checkpoints import student_bytes
from alignahead.datasets import GraphDataset
from alignahead.models import Student, StudentConfig
from alignahead.runtime import RuntimeSettings
from alignahead.spec import JobSpec
from alignahead.structure import (
    Target,
    concat_targets,
    distillation_loss,
    kernel_structure,
    layer_distances,
    layer_pairs,
    peer_layers,
    peer_targets,
    student_layers,
    targets_from,
)

log = logging.getLogger("alignahead.trainer")

STATE_FORMAT = 2  # 2 added the early-stopping monitor; format 1 states still load
SPLITS = ("train", "val", "test")
FLAT_EPOCHS, FLAT_LOSS = 3, 1e-6  # a distillation loss below this over the first epochs: warn, it teaches nothing


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
    """A student's best epoch: where its monitored validation metric (`training.monitor`: the score, by
    default, or the loss) was best; best_val and test_at_best are the val and test scores there."""

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
    stop_reason: str | None = None  # set when early stopping ended the run before the last epoch


@dataclass
class Callbacks:
    on_epoch: Callable[[list[EpochMetrics]], None] | None = None
    on_checkpoint: Callable[[Checkpoint], None] | None = None
    should_cancel: Callable[[], bool] | None = None


@dataclass
class _Monitor:
    """The early-stopping watch of one student: its best monitored value and when it came."""

    best: float | None = None
    epoch: int = 0


class _Cancelled(Exception):
    pass


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


def task_loss(logits: torch.Tensor, labels: torch.Tensor, multilabel: bool, reduction: str = "mean") -> torch.Tensor:
    """Binary cross-entropy per label (multilabel) or cross-entropy; logits [n, C], labels [n(, C)]."""
    if multilabel:
        return F.binary_cross_entropy_with_logits(logits, labels, reduction=reduction)
    return F.cross_entropy(logits, labels, reduction=reduction)


class Trainer:
    def __init__(
        self,
        spec: JobSpec,
        dataset: GraphDataset,
        callbacks: Callbacks | None = None,
        *,
        fused: bool | None = None,
        reuse_forward_mb: float | None = None,
    ) -> None:
        """`fused`, `reuse_forward_mb`: None reads them from the environment (alignahead.runtime)."""
        self.spec = spec
        self.dataset = dataset
        self.callbacks = callbacks or Callbacks()
        self.device = resolve_device(spec.training.device)
        runtime = RuntimeSettings()
        self.fused = runtime.fused_distance if fused is None else fused
        self.reuse_forward_mb = runtime.reuse_forward_mb if reuse_forward_mb is None else reuse_forward_mb
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
        self.monitors = [_Monitor() for _ in self.students]
        self.train_graphs = [g.to(self.device) for g in dataset.train]
        self.eval_sets = self._eval_sets()
        # alternating: per student, per training graph, {peer layer: its fixed distribution}; None = stale
        self._targets: list[list[dict[int, Target]] | None] = [None] * len(self.students)
        # one-graph data: the evaluation logits that a refresh computed with the student's current weights
        self._one_graph = len(self.eval_sets) == 1 and self.eval_sets[0][0] is self.train_graphs[0]
        self._eval_logits: dict[int, torch.Tensor] = {}
        # one-graph data, no dropout: a refresh forward kept, with its graph, as the student's next step's;
        # per student, whether its kept forward fits the budget (None: not measured yet)
        self._kept: dict[int, tuple[torch.Tensor, list[torch.Tensor]]] = {}
        self._keeps: dict[int, bool] = {}
        self._flat = 0.0  # the largest distillation loss of the first epochs

    def _optimizer(self, model: Student) -> torch.optim.Optimizer:
        t = self.spec.training
        kind = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW, "sgd": torch.optim.SGD}[t.optimizer]
        return kind(model.parameters(), lr=t.lr, weight_decay=t.weight_decay)

    def _eval_sets(self) -> list[tuple[dgl.DGLGraph, dict[str, torch.Tensor]]]:
        """Graphs to run once per evaluation, each with the masks of the splits it serves."""
        d = self.dataset
        if len(d.train) == 1 and d.train[0] is d.val[0] is d.test[0]:  # one graph, split by masks
            g = self.train_graphs[0]
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
        return task_loss(logits[mask], graph.ndata["label"][mask], self.dataset.multilabel)

    def _batches(self) -> list[tuple[list[int], dgl.DGLGraph]]:
        """This pass's minibatches: (indices into train_graphs in batch order, their disjoint union)."""
        graphs, size = self.train_graphs, self.spec.training.batch_size
        if len(graphs) == 1:
            return [([0], graphs[0])]
        order = torch.randperm(len(graphs), generator=self.shuffle).tolist()
        parts = [order[i : i + size] for i in range(0, len(order), size)]
        return [(part, dgl.batch([graphs[j] for j in part])) for part in parts]

    def _step(self, index: int, loss: torch.Tensor) -> None:
        if self.callbacks.should_cancel and self.callbacks.should_cancel():
            raise _Cancelled
        self._eval_logits.pop(index, None)  # computed with the weights this step changes
        opt = self.optimizers[index]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    # --- one epoch ----------------------------------------------------------------------------

    def _evaluates(self, epoch: int) -> bool:
        t = self.spec.training
        return epoch % t.eval_every == 0 or epoch == t.epochs

    def _refresh_targets(self, index: int) -> None:
        """Cache student `index`'s distributions of the peer layers on every training graph, with its
        current weights, in eval mode, without gradient: what its peers learn until it steps again.
        On one-graph data, in an epoch that is evaluated, keep the logits for `evaluate` too."""
        model = self.students[index]
        tau = self.spec.distillation.tau
        if self._keeps.get(index, False):
            g = self.train_graphs[0]  # train mode == eval mode here: the refresh is the next training forward
            logits, hidden = model.train()(g, g.ndata["feat"])
            self._kept[index] = (logits, hidden)
            self._targets[index] = [peer_targets(g, hidden, self.pairs, tau, self.fused)]
            if self._evaluates(self.epoch + 1):
                self._eval_logits[index] = logits.detach()
            return
        keep_logits = self._one_graph and self._evaluates(self.epoch + 1)
        model.eval()
        targets = []
        with torch.no_grad():
            for g in self.train_graphs:
                if keep_logits:
                    self._eval_logits[index], hidden = model(g, g.ndata["feat"])
                else:
                    hidden = model.hidden_features(g, g.ndata["feat"])  # the output layer is not needed
                targets.append(peer_targets(g, hidden, self.pairs, tau, self.fused))
        self._targets[index] = targets

    def _reusable(self, model: Student) -> bool:
        """Whether a refresh forward can stand in for the next training forward: one graph (the same
        batch every step), a student with no randomness in train mode, and a budget to keep it in."""
        return self._one_graph and not model.stochastic and self.reuse_forward_mb > 0 and bool(self.pairs)

    def _cached_targets(self, index: int, part: list[int]) -> dict[int, Target]:
        """Student `index`'s cached targets for a batch of the training graphs `part`, in batch order."""
        cache = self._targets[index]
        assert cache is not None
        return concat_targets([cache[g] for g in part])

    def _epoch_alternating(self) -> list[tuple[float, float, float, float]]:
        alpha = self.spec.distillation.alpha
        mine = student_layers(self.pairs)
        self._eval_logits.clear()
        out = []
        for i, model in enumerate(self.students):
            t0 = time.perf_counter()
            if self.pairs:
                for j in range(len(self.students)):
                    if j != i and self._targets[j] is None:  # first epoch, or just resumed
                        self._refresh_targets(j)
            sums = torch.zeros(3, dtype=torch.float64, device=self.device)
            batches = self._batches()
            kept = self._kept.pop(i, None)  # one graph: the forward of its last refresh, same weights
            for part, graph in batches:
                peers = [self._cached_targets(j, part) for j in range(len(self.students)) if j != i and self.pairs]
                model.train()
                if kept is not None:
                    logits, hidden = kept
                elif i not in self._keeps and self._reusable(model):
                    with saved_bytes() as saved:  # the first training forward decides, for the rest of the run
                        logits, hidden = model(graph, graph.ndata["feat"])
                    held = saved.total * (len(self.students) - 1)
                    self._keeps[i] = held <= self.reuse_forward_mb * 2**20
                else:
                    logits, hidden = model(graph, graph.ndata["feat"])
                kept = None
                task = self._task_loss(logits, graph)
                own = layer_distances(graph, hidden, mine, self.fused)
                distill = distillation_loss(graph, own, peers, self.pairs)
                loss = task + alpha * distill
                self._step(i, loss)
                sums += torch.stack((loss.detach(), task.detach(), distill.detach())).to(torch.float64)
            self._targets[i] = None  # its weights moved: stale until refreshed
            if self.pairs:
                self._refresh_targets(i)
            n = len(batches)
            loss_sum, task_sum, distill_sum = sums.tolist()  # the one device sync of this pass
            out.append((loss_sum / n, task_sum / n, distill_sum / n, time.perf_counter() - t0))
        return out

    def _epoch_simultaneous(self) -> list[tuple[float, float, float, float]]:
        alpha, tau = self.spec.distillation.alpha, self.spec.distillation.tau
        k = len(self.students)
        layers = sorted(set(student_layers(self.pairs)) | set(peer_layers(self.pairs)))
        wanted = peer_layers(self.pairs)
        t0 = time.perf_counter()
        sums = torch.zeros(k, 3, dtype=torch.float64, device=self.device)
        batches = self._batches()
        for _, graph in batches:
            feat = graph.ndata["feat"]
            outs = []
            for model in self.students:
                model.train()
                outs.append(model(graph, feat))
            distances = [layer_distances(graph, hidden, layers, self.fused) for _, hidden in outs]
            if tau == "auto":  # each student's side is computed at each peer's own bandwidth
                computed: list[dict[int, torch.Tensor] | None] = [None] * k
                fixed = [targets_from(graph, {layer: d[layer] for layer in wanted}, tau) for d in distances]
            else:  # each (student, layer) distribution once: with gradient for its loss, detached for its peers
                computed = [{layer: kernel_structure(graph, d[layer], tau) for layer in layers} for d in distances]
                fixed = [{layer: Target(c[layer].detach(), tau) for layer in wanted} for c in computed]
            for i, (logits, _) in enumerate(outs):
                peers = [fixed[j] for j in range(k) if j != i and self.pairs]
                task = self._task_loss(logits, graph)
                distill = distillation_loss(graph, distances[i], peers, self.pairs, computed[i])
                loss = task + alpha * distill
                self._step(i, loss)  # students share no graph: peers were detached
                sums[i] += torch.stack((loss.detach(), task.detach(), distill.detach())).to(torch.float64)
        n, seconds = len(batches), time.perf_counter() - t0
        return [(s[0] / n, s[1] / n, s[2] / n, seconds) for s in sums.tolist()]

    # --- evaluation ---------------------------------------------------------------------------

    @torch.no_grad()
    def evaluate(self, index: int) -> dict[str, float | None]:
        """Train, val and test scores and the task loss on the validation nodes ('val_loss'), from one
        forward per evaluation graph."""
        model = self.students[index].eval()
        totals = {s: [0.0, 0.0] for s in SPLITS}
        val_loss = [0.0, 0.0]
        for graph, masks in self.eval_sets:
            logits = self._eval_logits.pop(index, None) if self._one_graph else None
            if logits is None:
                logits = model(graph, graph.ndata["feat"])[0]
            for split, mask in masks.items():
                labels = graph.ndata["label"][mask]
                num, den = score(logits[mask], labels, self.dataset.multilabel)
                totals[split][0] += num
                totals[split][1] += den
                if split == "val" and labels.numel():
                    val_loss[0] += task_loss(logits[mask], labels, self.dataset.multilabel, "sum").item()
                    val_loss[1] += labels.numel()
        scores: dict[str, float | None] = {s: (num / den if den else None) for s, (num, den) in totals.items()}
        scores["val_loss"] = val_loss[0] / val_loss[1] if val_loss[1] else None
        return scores

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
            "monitor": [[m.best, m.epoch] for m in self.monitors],
        }

    def load_state_dict(self, state: dict) -> None:
        if state.get("format") not in (1, STATE_FORMAT):
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
        # format 1 had no monitor: no early stopping could be asked of it
        monitored = state.get("monitor") or [[None, 0]] * len(self.monitors)
        for monitor, (best, ep) in zip(self.monitors, monitored, strict=True):
            monitor.best, monitor.epoch = best, ep
        self.epoch = state["epoch"]
        self._targets = [None] * len(self.students)  # recomputed from the loaded weights
        self._eval_logits.clear()
        self._kept.clear()

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

    def _warn_if_flat(self, rows: list[EpochMetrics]) -> None:
        """Warn once when every student's distillation loss stayed below FLAT_LOSS for the first
        FLAT_EPOCHS epochs: the kernel sees every edge alike at this tau, so distillation does nothing."""
        if not self.pairs or self.epoch > FLAT_EPOCHS:
            return
        self._flat = max(self._flat, *(r.distill_loss for r in rows))
        if self.epoch == min(FLAT_EPOCHS, self.spec.training.epochs) and self._flat < FLAT_LOSS:
            log.warning(
                "distillation loss below %g for the first %d epoch(s) (at most %.3g): at tau %s every edge of a "
                "node weighs alike, so the students have no local structure to learn from each other; set "
                "distillation.tau to 'auto' (or nearer the layers' edge L1 distances)",
                FLAT_LOSS, self.epoch, self._flat, self.spec.distillation.tau,
            )  # fmt: skip

    def _watch(self, index: int, scores: dict[str, float | None]) -> bool:
        """Update student `index`'s monitor (`training.monitor`) with this epoch's evaluation; True when
        it improved (strictly): this is the student's best epoch so far."""
        t, monitor = self.spec.training, self.monitors[index]
        value = scores["val" if t.monitor == "val_score" else "val_loss"]
        if value is None:
            return False
        better = -value if t.monitor == "val_loss" else value  # compare as "higher is better"
        if monitor.best is None or better > monitor.best:
            monitor.best, monitor.epoch = better, self.epoch
            return True
        return False

    def _early_stop_reason(self) -> str | None:
        """Why to stop now: every student went `patience` epochs without a better monitored value."""
        t = self.spec.training
        if t.patience is None or self.epoch >= t.epochs:
            return None
        if any(m.best is None or self.epoch - m.epoch < t.patience for m in self.monitors):
            return None
        last = max(m.epoch for m in self.monitors)
        return (
            f"early stop after epoch {self.epoch} of {t.epochs}: no student's {t.monitor} improved for "
            f"{t.patience} epochs (training.patience); the last improvement was at epoch {last}"
        )

    def run(self, stop_after: int | None = None) -> TrainResult:
        """Train from the current epoch to the spec's last (or to `stop_after`), until every student
        stops improving (`training.patience`), or until cancelled."""
        t = self.spec.training
        last = t.epochs if stop_after is None else min(stop_after, t.epochs)
        run_epoch = (
            self._epoch_alternating if self.spec.distillation.schedule == "alternating" else self._epoch_simultaneous
        )
        last_vals: list[float | None] | None = None  # the final epoch is always evaluated
        stop_reason: str | None = None
        try:
            while self.epoch < last and stop_reason is None:
                losses = run_epoch()
                self.epoch += 1
                evaluate = self._evaluates(self.epoch)
                rows = []
                for i, (loss, task, distill, seconds) in enumerate(losses):
                    scores = self.evaluate(i) if evaluate else dict.fromkeys((*SPLITS, "val_loss"))
                    summary = self.summaries[i]
                    val = scores["val"]
                    if self._watch(i, scores):  # the best epoch by the monitor: best checkpoint, test score there
                        summary.best_val, summary.best_epoch, summary.test_at_best = val, self.epoch, scores["test"]
                        self._emit(i, "best", val)
                    rows.append(
                        EpochMetrics(self.epoch, i, loss, task, distill, scores["train"], val, scores["test"], seconds)
                    )
                self._warn_if_flat(rows)
                if evaluate:
                    last_vals = [r.val_score for r in rows]
                    stop_reason = self._early_stop_reason()
                if self.callbacks.on_epoch:
                    self.callbacks.on_epoch(rows)
            if (self.epoch == t.epochs or stop_reason) and self.callbacks.on_checkpoint:
                for i in range(len(self.students)):
                    self._emit(i, "final", last_vals[i] if last_vals else self.evaluate(i)["val"])
        except _Cancelled:
            return TrainResult(True, self.epoch, self.summaries)
        return TrainResult(False, self.epoch, self.summaries, stop_reason)


def fit(spec: JobSpec, dataset: GraphDataset, callbacks: Callbacks | None = None) -> TrainResult:
    return Trainer(spec, dataset, callbacks).run()


@dataclass
class History:
    """Collects metric rows in memory; handy in notebooks and tests."""

    rows: list[EpochMetrics] = field(default_factory=list)

    def __call__(self, rows: list[EpochMetrics]) -> None:
        self.rows.extend(rows)
