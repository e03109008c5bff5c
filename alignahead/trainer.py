"""The training loop: k students trained together, each distilling its peers' local structure.

Read top to bottom: setup, one epoch per schedule, evaluation, state for resuming, the run loop.
Two schedules:
- alternating (the published code): in each epoch, student 1 steps over all batches against the
  others' current weights, then student 2, and so on. A peer's weights change only when that peer
  steps, so its target distributions are computed once, after its pass, by `PeerCache`
  (alignahead.peer_cache, which also keeps evaluation logits and, where it fits, the forward itself).
- simultaneous: on each batch every student steps once, each against its peers' detached
  distributions from the same forward pass. Each (student, layer) distribution is computed once per
  step, with gradient for the student's own loss and, detached, as its peers' target. Each student
  draws its dropout from its own random stream (`StudentRandomness`), so with
  `training.parallel: students` its students can train in several processes (alignahead.parallel,
  which this module calls at a few named points: `_share`, `_everyone`, `_to_leader`, `_tell`) with
  the same numbers.

Per-step losses stay on the device and are read once per epoch (no `.item()` sync per step).
`training.precision` runs the students under autocast (alignahead.precision).
"""

from __future__ import annotations

import contextlib
import io
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from alignahead.checkpoints import student_bytes
from alignahead.datasets import GraphDataset
from alignahead.graph import Graph
from alignahead.metrics import EpochMetrics
from alignahead.models import Student, StudentConfig
from alignahead.parallel import Command, RankGroup, devices_here, ranks_for
from alignahead.peer_cache import PeerCache
from alignahead.precision import Mixed, widen
from alignahead.runtime import RuntimeSettings
from alignahead.spec import JobSpec
from alignahead.structure import (
    Target,
    distillation_loss,
    kernel_structure,
    layer_distances,
    layer_pairs,
    peer_layers,
    student_layers,
    targets_from,
)

log = logging.getLogger("alignahead.trainer")

STATE_FORMAT = 2  # 2 added the early-stopping monitor; format 1 states still load
SPLITS = ("train", "val", "test")
FLAT_EPOCHS, FLAT_LOSS = 3, 1e-6  # a distillation loss below this over the first epochs: warn, it teaches nothing


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


@dataclass
class StudentEpoch:
    """One student's pass over the training data in an epoch: mean losses over its steps, wall time."""

    loss: float
    task_loss: float
    distill_loss: float
    seconds: float


class LossSums:
    """Per-step losses summed on the device and read once at the end of a pass: no sync per step."""

    def __init__(self, device: torch.device) -> None:
        self._sums = torch.zeros(3, dtype=torch.float64, device=device)
        self._steps = 0

    def add(self, loss: torch.Tensor, task: torch.Tensor, distill: torch.Tensor) -> None:
        self._sums += torch.stack((loss.detach(), task.detach(), distill.detach())).to(torch.float64)
        self._steps += 1

    def result(self, seconds: float) -> StudentEpoch:
        loss, task, distill = (s / self._steps for s in self._sums.tolist())  # the one device sync
        return StudentEpoch(loss, task, distill, seconds)


class StudentRandomness:
    """Each student's own random stream for dropout in the simultaneous schedule, seeded by the job's seed
    and the student's position: a student's masks depend neither on its peers' draws nor on which
    process trains it (training.parallel). The device's global generator is swapped in for the student's
    forward (dropout draws from it) and back out after."""

    def __init__(self, seed: int, students: int, device: torch.device, active: bool) -> None:
        self.device, self.active = device, active
        gen = "cuda" if device.type == "cuda" else "cpu"
        self.states = [
            torch.Generator(device=gen).manual_seed(seed * 1_000_003 + i + 1).get_state() for i in range(students)
        ]

    def _get(self) -> torch.Tensor:
        return torch.cuda.get_rng_state(self.device) if self.device.type == "cuda" else torch.get_rng_state()

    def _set(self, state: torch.Tensor) -> None:
        if self.device.type == "cuda":
            torch.cuda.set_rng_state(state, self.device)
        else:
            torch.set_rng_state(state)

    @contextlib.contextmanager
    def of(self, index: int) -> Iterator[None]:
        if not self.active:
            yield
            return
        outside = self._get()
        self._set(self.states[index])
        try:
            yield
        finally:
            self.states[index] = self._get()
            self._set(outside)


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
        reuse_forward_mb: float | None = None,
        devices: int | None = None,
        group: RankGroup | None = None,
    ) -> None:
        """`reuse_forward_mb`: None reads it from the environment (alignahead.runtime). `devices`: how many
        ranks a parallel job may have when `training.ranks` is unset (None: this machine's devices).
        `group`: this process's rank of a parallel job that was started elsewhere (a follower, torchrun);
        None starts the ranks here when the spec asks for them."""
        self.spec = spec
        self.dataset = dataset
        self.callbacks = callbacks or Callbacks()
        self.device = resolve_device(spec.training.device)
        if reuse_forward_mb is None:
            reuse_forward_mb = RuntimeSettings().reuse_forward_mb
        k = spec.num_students
        if group is None:
            ranks = ranks_for(spec, devices if devices is not None else devices_here(self.device.type))
            if ranks > 1:
                group = RankGroup.start(spec, dataset, ranks, self.device)
        self.group = group
        if group is not None:
            self.device = group.device
        self.owned = list(group.owned) if group is not None else list(range(k))
        try:
            self._build(reuse_forward_mb)
        except BaseException:
            self.close(abort=True)  # the ranks this process started end with it
            raise

    def _build(self, reuse_forward_mb: float) -> None:
        """The students, optimisers, data on the device and the peer cache."""
        spec, dataset, t, k = self.spec, self.dataset, self.spec.training, self.spec.num_students
        torch.manual_seed(t.seed)  # model initialisation depends on the seed alone (every rank builds all k)
        self.students: list[Student] = [
            Student(StudentConfig.from_spec(s, dataset.num_features, dataset.num_classes)).to(self.device)
            for s in spec.expanded_students()
        ]
        self.optimizers = [self._optimizer(m) for m in self.students]
        self.mixed = Mixed(t.precision, self.device, len(self.students))
        simultaneous = spec.distillation.schedule == "simultaneous"
        stochastic = any(m.stochastic for m in self.students)
        self.randomness = StudentRandomness(t.seed, k, self.device, active=simultaneous and stochastic)
        self.shuffle = torch.Generator().manual_seed(t.seed)
        self.pairs = layer_pairs(spec.distillation.strategy, spec.students[0].hidden_layers)
        self.epoch = 0
        self.summaries = [StudentSummary(i, m.arch) for i, m in enumerate(self.students)]
        self.monitors = [_Monitor() for _ in self.students]
        self.train_graphs = [g.to(self.device) for g in dataset.train]
        self.eval_sets = self._eval_sets()
        one_graph = len(self.eval_sets) == 1 and self.eval_sets[0][0] is self.train_graphs[0]
        self.peers = PeerCache(
            self.students,
            self.train_graphs,
            self.pairs,
            spec.distillation.tau,
            one_graph=one_graph,
            reuse_budget=reuse_forward_mb * 2**20,
            autocast=self.mixed.autocast,
        )
        self._flat = 0.0  # the largest distillation loss of the first epochs

    def _optimizer(self, model: Student) -> torch.optim.Optimizer:
        t = self.spec.training
        kind = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW, "sgd": torch.optim.SGD}[t.optimizer]
        return kind(model.parameters(), lr=t.lr, weight_decay=t.weight_decay)

    def _eval_sets(self) -> list[tuple[Graph, dict[str, torch.Tensor]]]:
        """Graphs to run once per evaluation, each with the masks of the splits it serves."""
        d = self.dataset
        if len(d.train) == 1 and d.train[0] is d.val[0] is d.test[0]:  # one graph, split by masks
            g = self.train_graphs[0]
            return [(g, {s: g.ndata[f"{s}_mask"] for s in SPLITS})]
        sets = []
        for split, graphs in zip(SPLITS, (d.train, d.val, d.test), strict=True):
            if graphs:
                g = Graph.batch(graphs).to(self.device)
                sets.append((g, {split: g.ndata[f"{split}_mask"]}))
        return sets

    # --- one step -----------------------------------------------------------------------------

    def _forward(self, model: Student, graph: Graph) -> tuple[torch.Tensor, list[torch.Tensor]]:
        with self.mixed.autocast():
            return model(graph, graph.ndata["feat"])

    def _task_loss(self, logits: torch.Tensor, graph: Graph) -> torch.Tensor:
        mask = graph.ndata["train_mask"]
        return task_loss(widen(logits[mask]), graph.ndata["label"][mask], self.dataset.multilabel)

    def _batches(self) -> list[tuple[list[int], Graph]]:
        """This pass's minibatches: (indices into train_graphs in batch order, their disjoint union)."""
        graphs, size = self.train_graphs, self.spec.training.batch_size
        if len(graphs) == 1:
            return [([0], graphs[0])]
        order = torch.randperm(len(graphs), generator=self.shuffle).tolist()
        parts = [order[i : i + size] for i in range(0, len(order), size)]
        return [(part, Graph.batch([graphs[j] for j in part])) for part in parts]

    def _cancel_asked(self) -> bool:
        return bool(self.callbacks.should_cancel and self.callbacks.should_cancel())

    def _step(self, index: int, loss: torch.Tensor) -> None:
        if self.group is None and self._cancel_asked():  # a parallel job asks once per step, in `_share`
            raise _Cancelled
        opt = self.optimizers[index]
        opt.zero_grad(set_to_none=True)
        self.mixed.step(index, loss, opt)

    # --- one epoch ----------------------------------------------------------------------------

    def _evaluates(self, epoch: int) -> bool:
        t = self.spec.training
        return epoch % t.eval_every == 0 or epoch == t.epochs

    def _epoch_alternating(self) -> dict[int, StudentEpoch]:
        """Each student in turn steps over every batch against its peers' current distributions."""
        alpha = self.spec.distillation.alpha
        mine = student_layers(self.pairs)
        self.peers.new_epoch()
        out = {}
        for i in range(len(self.students)):
            t0 = time.perf_counter()
            others = [j for j in range(len(self.students)) if j != i] if self.pairs else []
            sums = LossSums(self.device)
            for part, graph in self._batches():
                logits, hidden = self.peers.training_forward(i, graph)
                targets = [self.peers.targets(j, part) for j in others]
                task = self._task_loss(logits, graph)
                distill = distillation_loss(graph, layer_distances(graph, hidden, mine), targets, self.pairs)
                loss = task + alpha * distill
                self._step(i, loss)
                sums.add(loss, task, distill)
            self.peers.stepped(i, evaluated=self._evaluates(self.epoch + 1))
            out[i] = sums.result(time.perf_counter() - t0)
        return out

    def _epoch_simultaneous(self) -> dict[int, StudentEpoch]:
        """On each batch every student (of this rank) steps once, against its peers' distributions of the
        same forward."""
        alpha, tau = self.spec.distillation.alpha, self.spec.distillation.tau
        k = len(self.students)
        layers = sorted(set(student_layers(self.pairs)) | set(peer_layers(self.pairs)))
        wanted = peer_layers(self.pairs)
        t0 = time.perf_counter()
        sums = {i: LossSums(self.device) for i in self.owned}
        for _, graph in self._batches():
            outs = {}
            for i in self.owned:
                with self.randomness.of(i):
                    outs[i] = self._forward(self.students[i].train(), graph)
            distances = {i: layer_distances(graph, hidden, layers) for i, (_, hidden) in outs.items()}
            computed: dict[int, dict[int, torch.Tensor] | None]
            if tau == "auto":  # each student's side is computed at each peer's own bandwidth
                computed = dict.fromkeys(self.owned)
                fixed = {
                    i: targets_from(graph, {layer: d[layer] for layer in wanted}, tau) for i, d in distances.items()
                }
            else:  # each (student, layer) distribution once: with gradient for its loss, detached for its peers
                computed = {
                    i: {layer: kernel_structure(graph, d[layer], tau) for layer in layers} for i, d in distances.items()
                }
                fixed = {i: {layer: Target(c[layer].detach(), tau) for layer in wanted} for i, c in computed.items()}
            every = self._share(fixed, graph)
            for i, (logits, _) in outs.items():
                peers = [every[j] for j in range(k) if j != i and self.pairs]
                task = self._task_loss(logits, graph)
                distill = distillation_loss(graph, distances[i], peers, self.pairs, computed[i])
                loss = task + alpha * distill
                self._step(i, loss)  # students share no graph: peers were detached
                sums[i].add(loss, task, distill)
        seconds = time.perf_counter() - t0
        return {i: s.result(seconds) for i, s in sums.items()}

    # --- what a parallel job exchanges (alignahead.parallel); the identity in one process ---

    def _share(self, fixed: dict[int, dict[int, Target]], graph: Graph) -> dict[int, dict[int, Target]]:
        """Every student's peer-layer targets of this step, from this rank's: one all_gather of their
        log-probabilities (and, with tau 'auto', bandwidths) per step, with the leader's cancel flag."""
        if self.group is None:
            return fixed
        wanted = peer_layers(self.pairs)
        auto = self.spec.distillation.tau == "auto"
        rows = []
        for i in self.owned:
            parts = [fixed[i][layer].log_p for layer in wanted]
            if auto:
                parts += [fixed[i][layer].tau for layer in wanted]  # type: ignore[misc]
            rows.append(torch.stack(parts) if parts else torch.zeros(0, graph.num_edges(), device=self.device))
        got = self.group.exchange(rows, stop=self.group.leader and self._cancel_asked())
        if got.stop:
            raise _Cancelled
        tau = self.spec.distillation.tau
        every = {}
        for j, t in enumerate(got.tensors):
            if j in fixed:
                every[j] = fixed[j]
            else:
                n = len(wanted)
                every[j] = {
                    layer: Target(t[a], t[n + a] if auto else tau)  # type: ignore[arg-type]
                    for a, layer in enumerate(wanted)
                }
        return every

    def _everyone(self, mine: dict[int, object]) -> dict[int, object]:
        return mine if self.group is None else self.group.everyone(mine)

    def _to_leader(self, mine: list[Checkpoint]) -> list[Checkpoint]:
        return mine if self.group is None else self.group.to_leader(mine)

    def _tell(self, command: Command) -> None:
        if self.group is not None:
            self.group.tell(command)

    # --- evaluation ---------------------------------------------------------------------------

    @torch.no_grad()
    def evaluate(self, index: int) -> dict[str, float | None]:
        """Train, val and test scores and the task loss on the validation nodes ('val_loss'), from one
        forward per evaluation graph."""
        model = self.students[index].eval()
        totals = {s: [0.0, 0.0] for s in SPLITS}
        val_loss = [0.0, 0.0]
        for graph, masks in self.eval_sets:
            logits = self.peers.eval_logits(index)
            if logits is None:
                logits = self._forward(model, graph)[0]
            logits = widen(logits)
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
    def predict(self, index: int, graph: Graph) -> torch.Tensor:
        return widen(self._forward(self.students[index].eval(), graph.to(self.device))[0])

    # --- state for resuming -------------------------------------------------------------------

    def state_dict(self) -> dict:
        """The whole job's state; in a parallel job (the leader only) gathered from every rank first."""
        self._gather_students()
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
            "scalers": self.mixed.state_dict(),
            "student_rng": self.randomness.states,
        }

    def _own_part(self) -> bytes:
        """This rank's students' weights, optimiser, scaler and random stream, for the leader's state."""
        part = {
            i: (
                self.students[i].state_dict(),
                self.optimizers[i].state_dict(),
                self.mixed.scalers[i].state_dict(),
                self.randomness.states[i],
            )
            for i in self.owned
        }
        buf = io.BytesIO()
        torch.save(part, buf)
        return buf.getvalue()

    def _gather_students(self) -> None:
        """Leader of a parallel job: bring its copies of the other ranks' students up to date."""
        if self.group is None:
            return
        if not self.group.leader:
            raise RuntimeError("only the leader (rank 0) of a parallel job holds its state")
        self._tell(Command("state"))
        for data in self.group.to_leader([self._own_part()]):
            part = torch.load(io.BytesIO(data), map_location=self.device, weights_only=True)
            for i, (model, opt, scaler, rng) in part.items():
                if i in self.owned:
                    continue
                self.students[i].load_state_dict(model)
                self.optimizers[i].load_state_dict(opt)
                if scaler:
                    self.mixed.scalers[i].load_state_dict(scaler)
                self.randomness.states[i] = rng

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
        self.mixed.load_state_dict(state.get("scalers") or [{}] * len(self.students))
        if state.get("student_rng"):  # states saved before students had their own streams start them afresh
            self.randomness.states = [r.cpu() for r in state["student_rng"]]
        self.epoch = state["epoch"]
        self.peers.clear()  # recomputed from the loaded weights
        if self.group is not None and self.group.leader:
            buf = io.BytesIO()
            torch.save(state, buf)
            self._tell(Command("load", state=buf.getvalue()))

    def state_bytes(self) -> bytes:
        buf = io.BytesIO()
        torch.save(self.state_dict(), buf)
        return buf.getvalue()

    def load_state_bytes(self, data: bytes) -> None:
        # weights_only: a state file is data, never code
        self.load_state_dict(torch.load(io.BytesIO(data), map_location=self.device, weights_only=True))

    # --- the run loop -------------------------------------------------------------------------

    def _checkpoint(self, index: int, kind: str, val: float | None) -> Checkpoint:
        model = self.students[index]
        # the dataset section and seed rebuild the graph it was trained on: alignahead.load_graph
        meta = {"epoch": str(self.epoch), "kind": kind, "dataset": self.spec.dataset.model_dump_json()}
        data = student_bytes(model, {**meta, "seed": str(self.spec.training.seed)})
        return Checkpoint(index, kind, self.epoch, val, data)

    def _deliver(self, checkpoints: list[Checkpoint]) -> None:
        """Hand this epoch's checkpoints to the callback (at the leader: every rank's, in student order)."""
        for ckpt in self._to_leader(checkpoints):
            if self.callbacks.on_checkpoint:
                self.callbacks.on_checkpoint(ckpt)

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

    def _train_epoch(self, checkpoints: bool) -> list[EpochMetrics]:
        """One epoch of this process's students, evaluated; the rows of every student. Runs on every rank of
        a parallel job alike (the leader's `run`, the followers' `follow`)."""
        run_epoch = (
            self._epoch_alternating if self.spec.distillation.schedule == "alternating" else self._epoch_simultaneous
        )
        passes = run_epoch()
        self.epoch += 1
        evaluate = self._evaluates(self.epoch)
        mine = {
            i: (done, self.evaluate(i) if evaluate else dict.fromkeys((*SPLITS, "val_loss")))
            for i, done in passes.items()
        }
        every = self._everyone(mine)
        rows, made = [], []
        for i in range(len(self.students)):
            done, scores = every[i]
            summary = self.summaries[i]
            val = scores["val"]
            if self._watch(i, scores):  # the best epoch by the monitor: best checkpoint, test score there
                summary.best_val, summary.best_epoch, summary.test_at_best = val, self.epoch, scores["test"]
                if checkpoints and i in self.owned:
                    made.append(self._checkpoint(i, "best", val))
            losses = (done.loss, done.task_loss, done.distill_loss)
            rows.append(EpochMetrics(self.epoch, i, *losses, scores["train"], val, scores["test"], done.seconds))
        self._deliver(made)
        return rows

    def _finals(self, last_vals: list[float | None] | None, checkpoints: bool) -> None:
        """Every student's 'final' checkpoint (on every rank of a parallel job alike)."""
        made = []
        if checkpoints:
            for i in self.owned:
                made.append(self._checkpoint(i, "final", last_vals[i] if last_vals else self.evaluate(i)["val"]))
        self._deliver(made)

    def run(self, stop_after: int | None = None) -> TrainResult:
        """Train from the current epoch to the spec's last (or to `stop_after`), until every student
        stops improving (`training.patience`), or until cancelled. A parallel job's ranks end with the
        run unless it stopped at `stop_after` (then `close()` ends them)."""
        if self.group is not None and not self.group.leader:
            raise RuntimeError("a follower rank obeys its leader: call follow(), not run()")
        t = self.spec.training
        last = t.epochs if stop_after is None else min(stop_after, t.epochs)
        checkpoints = self.callbacks.on_checkpoint is not None
        last_vals: list[float | None] | None = None  # the final epoch is always evaluated
        stop_reason: str | None = None
        try:
            while self.epoch < last and stop_reason is None:
                self._tell(Command("epoch", checkpoints=checkpoints))
                rows = self._train_epoch(checkpoints)
                self._warn_if_flat(rows)
                if self._evaluates(self.epoch):
                    last_vals = [r.val_score for r in rows]
                    stop_reason = self._early_stop_reason()
                if self.callbacks.on_epoch:
                    self.callbacks.on_epoch(rows)
            if (self.epoch == t.epochs or stop_reason) and checkpoints:
                self._tell(Command("final", checkpoints=True, last_vals=last_vals))
                self._finals(last_vals, checkpoints)
        except _Cancelled:
            self.close()
            return TrainResult(True, self.epoch, self.summaries)
        except BaseException:
            self.close(abort=True)
            raise
        if self.epoch == t.epochs or stop_reason:
            self.close()
        return TrainResult(False, self.epoch, self.summaries, stop_reason)

    def follow(self) -> None:
        """A follower rank of a parallel job: do what the leader says until it says end."""
        assert self.group is not None and not self.group.leader
        try:
            while True:
                command = self.group.receive()
                if command.kind == "end":
                    return
                if command.kind == "epoch":
                    try:
                        self._train_epoch(command.checkpoints)
                    except _Cancelled:
                        pass  # the leader ends the group next
                elif command.kind == "final":
                    self._finals(command.last_vals, command.checkpoints)
                elif command.kind == "state":
                    self.group.to_leader([self._own_part()])
                elif command.kind == "load":
                    assert command.state is not None
                    self.load_state_bytes(command.state)
        finally:
            self.group.close()

    def close(self, abort: bool = False) -> None:
        """End a parallel job's ranks (nothing to do in one process); `abort` kills them."""
        if self.group is not None and self.group.leader:
            self.group.close(abort=abort)


def fit(spec: JobSpec, dataset: GraphDataset, callbacks: Callbacks | None = None) -> TrainResult:
    return Trainer(spec, dataset, callbacks).run()


@dataclass
class History:
    """Collects metric rows in memory; handy in notebooks and tests."""

    rows: list[EpochMetrics] = field(default_factory=list)

    def __call__(self, rows: list[EpochMetrics]) -> None:
        self.rows.extend(rows)
