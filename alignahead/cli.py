"""`alignahead train SPEC` runs a job locally; `alignahead datasets` lists what can be trained on;
`alignahead example-npz FILE` writes a graph in the npz layout, to try an upload with.
The service commands (`submit`, `jobs`, `status`, `wait`, `metrics`, `cancel`, `delete`, `download`,
`logs`, `upload`) talk to a running service: see alignahead/client/cli.py. `study` runs a spec over
seeds and a grid of values, on the service or locally: see alignahead/study_cli.py.

An output folder holds spec.json, metrics.jsonl (one row per student per epoch), checkpoints/
(student-<i>-best|final.safetensors), state.pt (for --resume) and summary.json.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING

import yaml
from pydantic import ValidationError

from alignahead.client.cli import add_commands
from alignahead.client.progress import Progress, percent
from alignahead.spec import JobSpec, error_lines
from alignahead.study_cli import add_commands as add_study_commands

if TYPE_CHECKING:  # torch and DGL load only for the commands that train
    from alignahead.metrics import EpochMetrics
    from alignahead.trainer import Checkpoint, Trainer


def read_spec(path: Path) -> JobSpec:
    """A spec from YAML or JSON (JSON is YAML); errors name the field and the problem."""
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as e:
        raise SystemExit(f"error: cannot read spec {path}: {e}") from e
    try:
        return JobSpec.model_validate(data or {})
    except ValidationError as e:
        raise SystemExit(f"error: invalid spec {path}:\n{format_errors(e)}") from e


def format_errors(error: ValidationError) -> str:
    return "\n".join(f"  {line}" for line in error_lines(error.errors()))


class RunFolder:
    """Writes a run's files; metrics append as JSON lines so that a crash loses at most one epoch."""

    def __init__(self, out: Path) -> None:
        self.out = out
        self.metrics = out / "metrics.jsonl"
        self.checkpoints = out / "checkpoints"
        self.state = out / "state.pt"
        self.checkpoints.mkdir(parents=True, exist_ok=True)

    def write_metrics(self, rows: list[EpochMetrics]) -> None:
        with self.metrics.open("a") as f:
            for row in rows:
                f.write(json.dumps(asdict(row)) + "\n")

    def write_checkpoint(self, ckpt: Checkpoint) -> None:
        path = self.checkpoints / f"student-{ckpt.student}-{ckpt.kind}.safetensors"
        tmp = path.with_suffix(".tmp")
        tmp.write_bytes(ckpt.data)
        tmp.replace(path)

    def write_state(self, trainer: Trainer) -> None:
        tmp = self.state.with_suffix(".tmp")
        tmp.write_bytes(trainer.state_bytes())
        tmp.replace(self.state)

    def truncate_metrics(self, epoch: int) -> None:
        """Drop rows past a resumed state's epoch, so every epoch appears once."""
        if not self.metrics.exists():
            return
        kept = [ln for ln in self.metrics.read_text().splitlines() if ln and json.loads(ln)["epoch"] <= epoch]
        self.metrics.write_text("".join(ln + "\n" for ln in kept))


def train(args: argparse.Namespace) -> int:
    from alignahead.datasets import DatasetError, load_dataset
    from alignahead.runtime import set_torch_threads
    from alignahead.trainer import Callbacks, Trainer

    spec = read_spec(Path(args.spec))
    set_torch_threads(args.threads)
    if args.device:
        spec = spec.model_copy(update={"training": spec.training.model_copy(update={"device": args.device})})
    try:
        dataset = load_dataset(spec.dataset, seed=spec.training.seed, data_dir=args.data_dir)
    except DatasetError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    group = None
    if "WORLD_SIZE" in os.environ and spec.training.parallel == "students":  # one rank of a torchrun launch
        from alignahead.parallel import RankGroup, end_rank_process
        from alignahead.trainer import resolve_device

        group = RankGroup.from_environment(spec, resolve_device(spec.training.device).type)
        if not group.leader:  # rank 0 writes the outputs; the others train their students
            Trainer(spec, dataset, group=group).follow()
            end_rank_process(0)
    run = RunFolder(Path(args.out))
    (run.out / "spec.json").write_text(spec.model_dump_json(indent=2))

    # a bar on a terminal, a few plain lines in a file or pipe
    bar = Progress("train", "epoch", spec.training.epochs, 0, enabled=not args.quiet, file=None)
    trainer: Trainer

    def on_epoch(rows: list[EpochMetrics]) -> None:
        run.write_metrics(rows)
        if trainer.epoch % args.state_every == 0 or trainer.epoch == spec.training.epochs:
            run.write_state(trainer)
        bar.advance_to(trainer.epoch)
        bar.show(
            "running",
            " ".join(
                f"s{r.student}:loss={r.loss:.3f},kd={r.distill_loss:.2e}"
                + (f",val={percent(r.val_score)}" if r.val_score is not None else "")
                for r in rows
            ),
        )

    trainer = Trainer(spec, dataset, Callbacks(on_epoch=on_epoch, on_checkpoint=run.write_checkpoint), group=group)
    if args.resume and run.state.exists():
        try:
            trainer.load_state_bytes(run.state.read_bytes())
        except ValueError as e:
            raise SystemExit(f"error: cannot resume from {run.state}: {e}") from e
        run.truncate_metrics(trainer.epoch)
        bar.advance_to(trainer.epoch)
    elif run.metrics.exists():
        run.metrics.unlink()
    result = trainer.run()
    bar.show("done")
    bar.close()
    summary = {
        "epochs_done": result.epochs_done,
        "stop_reason": result.stop_reason,
        "students": [asdict(s) for s in result.students],
        "dataset": dataset.preprocessing,  # the features, component and classes the students saw
    }
    (run.out / "summary.json").write_text(json.dumps(summary, indent=2))
    for s in result.students:
        print(f"student {s.student} ({s.arch}): best val {percent(s.best_val)} at epoch {s.best_epoch}, "
              f"test there {percent(s.test_at_best)}")  # fmt: skip
    if result.stop_reason:
        print(result.stop_reason)
    print(f"outputs in {run.out}")
    if trainer.group is not None:  # rank 0 of a parallel job, started by torchrun or starting its ranks
        from alignahead.parallel import end_rank_process

        end_rank_process(0)
    return 0


def datasets(_: argparse.Namespace) -> int:
    from alignahead.datasets import list_datasets

    for info in list_datasets():
        print(f"{info.name:18} {info.kind:10} {info.description}")
    return 0


def example_npz(args: argparse.Namespace) -> int:
    from alignahead.datasets.synthetic import write_example_npz
    from alignahead.spec import SyntheticSpec

    try:
        spec = SyntheticSpec(num_nodes=args.nodes, num_classes=args.classes, num_features=args.features)
    except ValidationError as e:
        print(f"error: {'; '.join(error_lines(e.errors(), SyntheticSpec))}", file=sys.stderr)
        return 2
    made = write_example_npz(args.path, spec, seed=args.seed)
    print(f"wrote {made.path}: {made.nodes} nodes, {made.edges} edges, {made.features} features, {made.classes} "
          f"classes. Upload it with `alignahead upload {made.path}`, or train on it here with the dataset "
          f"section {{name: npz, path: {made.path}}}")  # fmt: skip
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="alignahead", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("train", help="train the students of a job spec (YAML or JSON) locally")
    p.add_argument("spec", help="job spec file")
    p.add_argument("--out", default="runs/latest", help="output folder (default runs/latest)")
    p.add_argument("--data-dir", default=None, help="dataset cache folder (default $ALIGNAHEAD_DATA_DIR)")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], help="override training.device")
    p.add_argument("--resume", action="store_true", help="continue from OUT/state.pt if present")
    p.add_argument("--state-every", type=int, default=10, help="save state.pt every n epochs (default 10)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch CPU threads (default $ALIGNAHEAD_TORCH_THREADS, else one per core); use 1 when "
        "several runs share a machine",
    )
    p.set_defaults(func=train)
    d = sub.add_parser("datasets", help="list the dataset registry")
    d.set_defaults(func=datasets)
    text = "write an example graph (a stochastic block model) in the npz layout that uploads take"
    e = sub.add_parser("example-npz", help=text, description=text)
    e.add_argument("path", help="the file to write, e.g. graph.npz")
    e.add_argument("--nodes", type=int, default=600, help="nodes (default 600)")
    e.add_argument("--classes", type=int, default=4, help="classes (default 4)")
    e.add_argument("--features", type=int, default=32, help="features per node (default 32)")
    e.add_argument("--seed", type=int, default=0, help="the seed it is drawn from (default 0)")
    e.set_defaults(func=example_npz)
    add_commands(sub)
    add_study_commands(sub)
    args = parser.parse_args(argv)
    if getattr(args, "state_every", 1) < 1:
        parser.error("--state-every must be at least 1")
    if (getattr(args, "threads", None) or 1) < 1:
        parser.error("--threads must be at least 1")
    return args.func(args)


if __name__ == "__main__":
    raise SystemExit(main())
