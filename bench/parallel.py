"""`training.parallel: students` against one process: epoch wall time and peak memory per rank.

    python bench/parallel.py                          # ppi-batch and physics (bench/compare.py's settings)
    python bench/parallel.py --setting ppi-batch --epochs 4 --out parallel.json

For each setting, each run in its own fresh 'spawn' subprocess with one torch thread per process:
- `alone`: one student trained alone (strategy none, k = 1): the floor;
- `one-process:K`: K students, schedule simultaneous, in one process;
- `ranks:K`: the same spec with `training.parallel: students` on 2 ranks (K / 2 students each).
Epoch time is the median wall time of the epochs between the first (the warm-up: starting the ranks,
compiling) and the last (which also ends the ranks), evaluation included where the setting evaluates
(each rank evaluates its own students; physics evaluates at its last epoch only). At least 4 epochs
by default. Memory is each process's peak RSS (VmHWM): the leader's reset after data loading, as
bench/compare.py does; a follower's read from /proc after every epoch but the last (it ends with
the run). The losses of `ranks:K` must equal
those of `one-process:K` to 1e-5 relative.

The ratios printed are those of the issue (#15): ranks:2 / alone, ranks:2 / one-process:2,
ranks:4 / one-process:4, and peak memory per rank / alone's.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.compare import SETTINGS, _reset_peak_rss, _status_kib, machine, setting_spec  # noqa: E402

DEFAULT_SETTINGS = ("ppi-batch", "physics")


def _proc_kib(pid: int, field: str) -> int:
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith(f"{field}:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def variant(setting: str, name: str, epochs: int | None, device: str | None) -> str:
    """The spec JSON of a variant: `alone`, `one-process:K` or `ranks:K`."""
    kind, _, k = name.partition(":")
    if epochs is None:  # two epochs timed at least: the first warms up, the last also ends the ranks
        epochs = max(4, SETTINGS[setting]["training"]["epochs"])
    spec = setting_spec(setting, int(k or 2), epochs, device)
    data = spec.model_dump(mode="json")
    data["distillation"]["schedule"] = "simultaneous"
    if kind == "alone":
        data["distillation"]["strategy"] = "none"
        data["students"][0]["count"] = 1
    if kind == "ranks":
        data["training"].update(parallel="students", ranks=2)
    from alignahead.spec import JobSpec

    return JobSpec.model_validate(data).model_dump_json()


def run_one(spec_json: str, threads: int) -> dict[str, Any]:
    """Train one variant epoch by epoch in this (fresh) process; times, losses and memory per process."""
    import torch

    from alignahead.datasets import load_dataset
    from alignahead.spec import JobSpec
    from alignahead.trainer import Callbacks, History, Trainer

    torch.set_num_threads(threads)
    spec = JobSpec.model_validate_json(spec_json)
    dataset = load_dataset(spec.dataset, seed=spec.training.seed)
    _reset_peak_rss()
    history = History()
    trainer = Trainer(spec, dataset, Callbacks(on_epoch=history))
    followers = [p.pid for p in trainer.group.children.processes] if trainer.group is not None else []
    seconds, waits, follower_peak = [], [], [0] * len(followers)
    for epoch in range(1, spec.training.epochs + 1):
        t0 = time.perf_counter()
        w0 = trainer.group.collective_seconds if trainer.group is not None else 0.0
        trainer.run(stop_after=epoch)
        seconds.append(time.perf_counter() - t0)
        waits.append((trainer.group.collective_seconds if trainer.group is not None else 0.0) - w0)
        if epoch < spec.training.epochs:
            follower_peak = [max(a, _proc_kib(pid, "VmHWM")) for a, pid in zip(follower_peak, followers, strict=True)]
    trainer.close()
    losses = [[r.loss for r in history.rows if r.epoch == e] for e in range(1, spec.training.epochs + 1)]
    return {
        "epoch_seconds": seconds,
        "median_s": statistics.median(seconds[1:-1]),
        "collective_median_s": statistics.median(waits[1:-1]),  # the leader's, in the same epochs
        "peak_mib": [_status_kib("VmHWM") / 1024, *(k / 1024 for k in follower_peak)],
        "losses": losses,
    }


def run_isolated(spec_json: str, threads: int) -> dict[str, Any]:
    with ProcessPoolExecutor(max_workers=1, mp_context=mp.get_context("spawn")) as pool:
        return pool.submit(run_one, spec_json, threads).result()


def _same_losses(a: list[list[float]], b: list[list[float]]) -> float:
    return max(
        abs(x - y) / max(abs(x), 1e-30) for ea, eb in zip(a, b, strict=True) for x, y in zip(ea, eb, strict=True)
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--setting", action="append", help=f"default: {', '.join(DEFAULT_SETTINGS)}")
    p.add_argument("--epochs", type=int, help="epochs per run (>= 3; the first and the last are not timed)")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], help="training.device (cuda: nccl, one GPU a rank)")
    p.add_argument("--threads", type=int, default=1, help="torch threads per process (default 1)")
    p.add_argument("--k4", default="ppi-batch", help="settings that also run k = 4 (comma-separated)")
    p.add_argument("--out", help="write the raw figures to this JSON file")
    args = p.parse_args(argv)
    print(json.dumps(machine()))
    results: dict[str, Any] = {}
    for setting in args.setting or DEFAULT_SETTINGS:
        names = ["alone", "one-process:2", "ranks:2"]
        if setting in args.k4.split(","):
            names += ["one-process:4", "ranks:4"]
        runs = {}
        for name in names:
            runs[name] = run_isolated(variant(setting, name, args.epochs, args.device), args.threads)
            r = runs[name]
            peaks = ", ".join(f"{m:.0f}" for m in r["peak_mib"])
            waited = r["collective_median_s"]
            print(f"{setting} {name}: epoch {r['median_s']:.3f} s (leader in collectives {waited:.3f} s), "
                  f"peak MiB per process {peaks}", flush=True)  # fmt: skip
        alone = runs["alone"]
        ratio = lambda a, b, runs=runs: runs[a]["median_s"] / b["median_s"]  # noqa: E731
        print(f"\n{setting}:")
        print(f"  k=2, 2 ranks / one student alone:      {ratio('ranks:2', alone):.2f}")
        print(f"  k=2, 2 ranks / one process:            {ratio('ranks:2', runs['one-process:2']):.2f}")
        if "ranks:4" in runs:
            print(f"  k=4, 2 ranks / one process:            {ratio('ranks:4', runs['one-process:4']):.2f}")
        worst = max(runs["ranks:2"]["peak_mib"])
        print(f"  peak memory per rank (k=2) / alone:    {worst / alone['peak_mib'][0]:.2f}")
        for k in (2, 4):
            if f"ranks:{k}" in runs:
                diff = _same_losses(runs[f"one-process:{k}"]["losses"], runs[f"ranks:{k}"]["losses"])
                print(f"  k={k} losses, 2 ranks vs one process:   max relative difference {diff:.2e}")
        results[setting] = runs
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
