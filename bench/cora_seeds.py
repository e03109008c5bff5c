"""Mean +- std over seeds of a spec's students, next to the plain GCN of bench/plain_gcn.py on the same split.

    python bench/cora_seeds.py SPEC.yaml [--seeds 10] [--set dotted.key=value ...] [--plain-gcn]
                               [--out results.json]

Each seed s trains the spec in-process with training.seed = s (so a new per-class split and new weights,
as in Shchur et al.'s random splits x random initialisations) through `alignahead.trainer.Trainer`, and
records every student's `test_at_best` (test accuracy at its best validation score, what a job reports).
From each student's evaluation history it also prints what two other rules would have reported: the
test accuracy at the lowest validation loss (Shchur et al. restore those weights) and at the last epoch
run (Kipf & Welling report the weights at which early stopping halts). `--set` overrides
any spec field by its dotted path, the value read as YAML (`--set dataset.features=raw`,
`--set students.0.hidden_size=16`). `--plain-gcn` also trains the from-scratch GCN of Kipf & Welling on
the same npz with the same preprocessing and checks, per seed, that it sees exactly the job's split.

Until a study feature exists, this is how the README's literature figures are measured. It keeps to one
torch thread; run it under `nice -n 5` on a shared machine.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import yaml

os.environ.setdefault("DGLBACKEND", "pytorch")
ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # `python bench/cora_seeds.py` puts bench/, not the repo root, on the path
    sys.path.insert(0, str(ROOT))

from alignahead.datasets import MASK_KEYS, GraphDataset, load_dataset  # noqa: E402
from alignahead.runtime import set_torch_threads  # noqa: E402
from alignahead.spec import JobSpec  # noqa: E402
from alignahead.trainer import Trainer  # noqa: E402
from bench import plain_gcn  # noqa: E402

# Shchur et al. (2018), Table 2: Cora, 20/30/rest per class, largest connected component
LITERATURE = {"gcn": 0.815, "gat": 0.818}


def apply_override(data: dict[str, Any], assignment: str) -> None:
    """`a.b.0.c=value` sets data['a']['b'][0]['c'] to the YAML value; missing dicts are created."""
    path, sep, raw = assignment.partition("=")
    if not sep or not path:
        raise SystemExit(f"--set expects dotted.path=value, got {assignment!r}")
    keys = path.split(".")
    node: Any = data
    for key in keys[:-1]:
        node = node[int(key)] if isinstance(node, list) else node.setdefault(key, {})
    last = keys[-1]
    value = yaml.safe_load(raw)
    if isinstance(node, list):
        node[int(last)] = value
    else:
        node[last] = value


def load_spec(path: str, overrides: list[str]) -> dict[str, Any]:
    data = yaml.safe_load(Path(path).read_text())
    for assignment in overrides:
        apply_override(data, assignment)
    JobSpec.model_validate(data)  # fail before the first seed, not after it
    return data


def mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.mean(values), statistics.stdev(values) if len(values) > 1 else 0.0


class RecordingTrainer(Trainer):
    """The Trainer, unchanged, keeping every evaluation: per student, (epoch, scores incl. val_loss)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.history: list[list[tuple[int, dict[str, float | None]]]] = [[] for _ in self.students]

    def evaluate(self, index: int) -> dict[str, float | None]:
        scores = super().evaluate(index)
        self.history[index].append((self.epoch, scores))
        return scores


def run_students(data: dict[str, Any], seed: int) -> tuple[JobSpec, GraphDataset, list[dict[str, Any]]]:
    spec = JobSpec.model_validate({**data, "training": {**data.get("training", {}), "seed": seed}})
    dataset = load_dataset(spec.dataset, seed=spec.training.seed)
    trainer = RecordingTrainer(spec, dataset)
    result = trainer.run()
    rows = []
    for s, history in zip(result.students, trainer.history, strict=True):
        at_min_loss = min(history, key=lambda h: h[1]["val_loss"])  # the first lowest
        rows.append(
            {
                "student": s.student,
                "arch": s.arch,
                "test_at_best": s.test_at_best,
                "best_val": s.best_val,
                "best_epoch": s.best_epoch,
                "test_at_min_val_loss": at_min_loss[1]["test"],
                "min_val_loss_epoch": at_min_loss[0],
                "test_at_last": history[-1][1]["test"],
                "epochs_done": result.epochs_done,
            }
        )
    return spec, dataset, rows


def run_plain_gcn(spec: JobSpec, dataset: GraphDataset, seed: int) -> plain_gcn.Run:
    """The plain GCN on the job's file, preprocessed the same way; its split must be the job's."""
    if spec.dataset.name != "npz":
        raise SystemExit("--plain-gcn needs an npz dataset (it reads the file itself)")
    prep = dataset.preprocessing
    graph = plain_gcn.read_graph(
        str(spec.dataset.path), largest_component=bool(prep["largest_component"]), features=str(prep["features"])
    )
    if prep.get("dropped_classes"):
        raise SystemExit("--plain-gcn does not drop small classes; this file has some")
    split = spec.dataset.split
    split_seed = seed if split.seed is None else split.seed
    masks = plain_gcn.split_for(graph, split_seed, split.train_per_class, split.val_per_class)
    g = dataset.train[0]
    for key, mask in zip(MASK_KEYS, masks, strict=True):
        if not np.array_equal(g.ndata[key].numpy(), mask):
            raise SystemExit(f"seed {seed}: the plain GCN's {key} differs from the job's; the comparison is off")
    return plain_gcn.train(graph, masks, seed)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("spec", help="a job spec (YAML)")
    p.add_argument("--seeds", type=int, default=10, choices=range(1, 1001), metavar="N", help="seeds 0..N-1")
    p.add_argument("--first-seed", type=int, default=0)
    p.add_argument("--set", action="append", default=[], metavar="PATH=VALUE", help="override a spec field")
    p.add_argument("--plain-gcn", action="store_true", help="also train the plain GCN on the same splits")
    p.add_argument("--out", help="write every seed's figures as JSON")
    args = p.parse_args(argv)
    set_torch_threads(1)
    data = load_spec(args.spec, args.set)
    print(f"{args.spec} {' '.join(args.set)}".strip())
    seeds = range(args.first_seed, args.first_seed + args.seeds)
    per_seed: list[dict[str, Any]] = []
    for seed in seeds:
        t0 = time.perf_counter()
        spec, dataset, rows = run_students(data, seed)
        entry: dict[str, Any] = {"seed": seed, "students": rows, "preprocessing": dataset.preprocessing}
        line = " ".join(
            f"{r['arch']}{r['student']} {r['test_at_best']:.4f} (ep {r['best_epoch']}/{r['epochs_done']})" for r in rows
        )
        if args.plain_gcn:
            run = run_plain_gcn(spec, dataset, seed)
            entry["plain_gcn"] = {"test": run.test, "val": run.val, "epochs": run.epochs}
            line += f" | plain GCN {run.test:.4f} (ep {run.epochs})"
        per_seed.append(entry)
        print(f"seed {seed}: {line} [{time.perf_counter() - t0:.0f} s]", flush=True)

    print(f"preprocessing: {per_seed[0]['preprocessing']}")
    k = len(per_seed[0]["students"])
    summary: dict[str, Any] = {}
    for i in range(k):
        arch = per_seed[0]["students"][i]["arch"]
        m, s = mean_std([e["students"][i]["test_at_best"] for e in per_seed])
        summary[f"student {i} ({arch})"] = (m, s)
    for key, name in (
        ("test_at_best", "all students"),
        ("test_at_min_val_loss", "  at lowest val loss"),
        ("test_at_last", "  at the last epoch"),
    ):
        summary[name] = mean_std([r[key] for e in per_seed for r in e["students"]])
    if args.plain_gcn:
        summary["plain GCN (Kipf & Welling)"] = mean_std([e["plain_gcn"]["test"] for e in per_seed])
    print(f"test accuracy over {len(per_seed)} seeds ({seeds.start}..{seeds.stop - 1}), mean +- std:")
    for name, (m, s) in summary.items():
        print(f"  {name:28s} {100 * m:6.2f} +- {100 * s:.2f} %")
    archs = {r["arch"] for e in per_seed for r in e["students"]}
    for arch in sorted(archs & LITERATURE.keys()):
        print(f"  Shchur et al. (2018) {arch.upper():7s} {100 * LITERATURE[arch]:6.2f} %")
    if args.out:
        Path(args.out).write_text(json.dumps({"spec": data, "overrides": args.set, "seeds": per_seed}, indent=1))


if __name__ == "__main__":
    main()
