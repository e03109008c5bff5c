"""A plain reference of Alignahead training, written in the style of the authors' main.py.

Why it exists: it is the yardstick for `alignahead.trainer.Trainer`, both for speed (it shares and
caches nothing) and for correctness (it is written independently of `alignahead.structure`, so
when both give the same losses on the same spec, the distillation math is cross-checked).

What is mirrored from the published loop (alternating schedule):
- for each epoch, for each student i, for each batch: the student's forward, its label loss, then for
  every peer j a fresh no-grad forward of j, and for every layer pair both local-structure
  distributions computed afresh with `edge_softmax` and `log(...)` taken of them, as the original does;
- the distillation loss is divided by k - 1, then loss = label + alpha * lsp, one optimiser step.

What is shared with the Trainer on purpose, so that both start from identical weights and see the
same batches: `StudentConfig`, the DGL-era students built from it (bench/dgl_students.py: DGL's
layers, the parameters and initialisation of ours), `torch.manual_seed(seed)` then the students built in order,
the optimiser construction, the batching (one graph -> that graph; several -> `torch.randperm` with a
`torch.Generator` seeded with the seed, drawn once per student pass, `dgl.batch` of batch_size graphs)
and peers run in eval mode under no_grad. Everything else is DGL's: the graphs are `Graph.to_dgl()`
copies of the dataset's (same edge order), the students and the structure run on DGL's kernels. With
strategy 'none' it is the floor of the DGL-era code (bench/compare.py's `dgl-floor`).
"""

from __future__ import annotations

import resource
import time
from collections.abc import Callable
from typing import Any

import dgl
import dgl.function as fn
import torch
import torch.nn.functional as F
from dgl.nn.functional import edge_softmax

from alignahead.datasets import GraphDataset
from alignahead.models import StudentConfig
from alignahead.spec import JobSpec
from bench.compare import init_checksum
from bench.dgl_students import DglStudent

# --- the original's two helpers ------------------------------------------------------------------


def lsp_distribution(graph: dgl.DGLGraph, feat: torch.Tensor, tau: float) -> torch.Tensor:
    """Per-edge probabilities [E, 1]: edge_softmax over each node's in-edges of exp(-|h_u - h_v|_1 / tau)."""
    with graph.local_scope():
        graph.ndata["h"] = feat
        graph.apply_edges(fn.u_sub_v("h", "h", "diff"))
        e = torch.exp(-torch.sum(torch.abs(graph.edata["diff"]), dim=1, keepdim=True) / tau)
        return edge_softmax(graph, e)


def graph_kldiv(graph: dgl.DGLGraph, dist_s: torch.Tensor, dist_co: torch.Tensor) -> torch.Tensor:
    """KL(peer || student) summed over each node's in-edges, averaged over nodes (the original's way:
    per-edge terms, u_mul_e with a ones node field, sum per node, mean)."""
    with graph.local_scope():
        graph.ndata["kldiv"] = torch.ones(graph.num_nodes(), 1, device=dist_s.device)
        graph.edata["diff"] = dist_co * (torch.log(dist_co) - torch.log(dist_s))
        graph.update_all(fn.u_mul_e("kldiv", "diff", "m"), fn.sum("m", "kldiv"))
        return torch.mean(torch.flatten(graph.ndata["kldiv"]))


def reference_pairs(strategy: str, num_layers: int) -> list[tuple[int, int]]:
    """(student layer, peer layer), written out again rather than imported, as part of the cross-check."""
    if strategy == "alignahead":
        return [(l + 1, l) for l in range(num_layers - 1)] + [(0, num_layers - 1)]  # noqa: E741
    if strategy == "one-to-one":
        return [(l, l) for l in range(num_layers)]  # noqa: E741
    if strategy == "none":
        return []
    raise ValueError(f"unknown strategy {strategy!r}")


# --- the loop --------------------------------------------------------------------------------------


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def _sync(device: torch.device) -> None:
    # CUDA kernels run asynchronously: time only finished work
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _label_loss(logits: torch.Tensor, graph: dgl.DGLGraph, multilabel: bool) -> torch.Tensor:
    mask = graph.ndata["train_mask"]
    if multilabel:
        return F.binary_cross_entropy_with_logits(logits[mask], graph.ndata["label"][mask])
    return F.cross_entropy(logits[mask], graph.ndata["label"][mask])


def _batches(graphs: list[dgl.DGLGraph], size: int, gen: torch.Generator) -> list[dgl.DGLGraph]:
    if len(graphs) == 1:
        return graphs
    order = torch.randperm(len(graphs), generator=gen).tolist()
    return [dgl.batch([graphs[j] for j in order[i : i + size]]) for i in range(0, len(order), size)]


def _counts(logits: torch.Tensor, labels: torch.Tensor, multilabel: bool) -> tuple[float, float]:
    """(numerator, denominator) of micro-F1 (multilabel) or accuracy, so graphs pool exactly."""
    if multilabel:
        pred, truth = logits > 0, labels > 0.5
        tp = float((pred & truth).sum())
        fp, fn_ = float((pred & ~truth).sum()), float((~pred & truth).sum())
        return 2 * tp, 2 * tp + fp + fn_
    return float((logits.argmax(1) == labels).sum()), float(labels.numel())


@torch.no_grad()
def _evaluate(model: DglStudent, dataset: GraphDataset, device: torch.device) -> dict[str, float | None]:
    """Val and test scores; one forward per distinct graph, counts pooled over a split's graphs."""
    model.eval()
    out: dict[str, float | None] = {}
    cache: dict[int, torch.Tensor] = {}  # transductive: val and test are the same graph
    for split, graphs in (("val", dataset.val), ("test", dataset.test)):
        num = den = 0.0
        for g in graphs:
            if id(g) not in cache:
                gd = g.to_dgl().to(device)
                cache[id(g)] = model(gd, gd.ndata["feat"])[0]
            mask = g.ndata[f"{split}_mask"].to(device)
            n, d = _counts(cache[id(g)][mask], g.ndata["label"].to(device)[mask], dataset.multilabel)
            num, den = num + n, den + d
        out[split] = num / den if den else None
    return out


def run_reference(
    spec: JobSpec,
    dataset: GraphDataset,
    *,
    on_epoch: Callable[[int, list[tuple[float, float, float]]], None] | None = None,
) -> dict[str, Any]:
    """Train as the published code does; returns timings, per-epoch losses and scores per student.

    Keys: epoch_seconds (wall per epoch, evaluation included), eval_seconds (its evaluation part),
    epoch_cpu_seconds and eval_cpu_seconds (the same in this process's CPU time), epoch_minor_faults,
    losses (per epoch, per student: mean over batches of (loss, label, lsp)), init_checksum, and
    students (best_val, best_epoch, test_at_best, final_val, final_test).
    """
    if spec.distillation.schedule != "alternating":
        raise ValueError("the reference mirrors the published code, i.e. the 'alternating' schedule only")
    t, d = spec.training, spec.distillation
    device = _device(t.device)

    torch.manual_seed(t.seed)
    models = [
        DglStudent(StudentConfig.from_spec(s, dataset.num_features, dataset.num_classes)).to(device)
        for s in spec.expanded_students()
    ]
    opt_kind = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW, "sgd": torch.optim.SGD}[t.optimizer]
    optimizers = [opt_kind(m.parameters(), lr=t.lr, weight_decay=t.weight_decay) for m in models]
    shuffle = torch.Generator().manual_seed(t.seed)
    pairs = reference_pairs(d.strategy, spec.students[0].hidden_layers)
    train_graphs = [g.to_dgl().to(device) for g in dataset.train]
    k = len(models)
    checksum = init_checksum(models)

    epoch_seconds: list[float] = []
    eval_seconds: list[float] = []
    epoch_cpu: list[float] = []
    eval_cpu: list[float] = []
    epoch_faults: list[int] = []
    losses: list[list[tuple[float, float, float]]] = []
    best: list[dict[str, Any]] = [{"best_val": None, "best_epoch": None, "test_at_best": None} for _ in models]
    final: list[dict[str, float | None]] = [{"val": None, "test": None} for _ in models]

    for epoch in range(1, t.epochs + 1):
        _sync(device)
        t0, c0, f0 = time.perf_counter(), time.process_time(), resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        row = []
        for i, model in enumerate(models):
            sums = [0.0, 0.0, 0.0]
            batches = _batches(train_graphs, t.batch_size, shuffle)
            for graph in batches:
                feats = graph.ndata["feat"]
                model.train()
                logits, mid_s = model(graph, feats)
                label_loss = _label_loss(logits, graph, dataset.multilabel)
                lsp_loss = torch.zeros((), device=device)
                if pairs:
                    for j, peer in enumerate(models):
                        if j == i:
                            continue
                        peer.eval()
                        with torch.no_grad():
                            _, mid_co = peer(graph, feats)  # recomputed per peer per batch
                        for s_layer, p_layer in pairs:
                            dist_s = lsp_distribution(graph, mid_s[s_layer], d.tau)
                            with torch.no_grad():
                                dist_co = lsp_distribution(graph, mid_co[p_layer], d.tau)
                            lsp_loss = lsp_loss + graph_kldiv(graph, dist_s, dist_co)
                    lsp_loss = lsp_loss / (k - 1)
                loss = label_loss + d.alpha * lsp_loss
                optimizers[i].zero_grad()
                loss.backward()
                optimizers[i].step()
                for m, v in enumerate((loss, label_loss, lsp_loss)):
                    sums[m] += v.item()
            row.append((sums[0] / len(batches), sums[1] / len(batches), sums[2] / len(batches)))
        losses.append(row)

        t1, c1 = time.perf_counter(), time.process_time()
        if epoch % t.eval_every == 0 or epoch == t.epochs:
            for i, model in enumerate(models):
                scores = _evaluate(model, dataset, device)
                final[i] = scores
                b = best[i]
                if scores["val"] is not None and (b["best_val"] is None or scores["val"] > b["best_val"]):
                    b.update(best_val=scores["val"], best_epoch=epoch, test_at_best=scores["test"])
        _sync(device)
        t2, c2 = time.perf_counter(), time.process_time()
        epoch_seconds.append(t2 - t0)
        eval_seconds.append(t2 - t1)
        epoch_cpu.append(c2 - c0)
        eval_cpu.append(c2 - c1)
        epoch_faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0)
        if on_epoch:
            on_epoch(epoch, row)

    students = [{**b, "final_val": f["val"], "final_test": f["test"]} for b, f in zip(best, final, strict=True)]
    return {
        "epoch_seconds": epoch_seconds,
        "eval_seconds": eval_seconds,
        "epoch_cpu_seconds": epoch_cpu,
        "eval_cpu_seconds": eval_cpu,
        "epoch_minor_faults": epoch_faults,
        "losses": losses,
        "init_checksum": checksum,
        "students": students,
    }
