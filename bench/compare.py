"""Time and cross-check `alignahead.trainer.Trainer` against the plain reference in bench/reference.py.

    python bench/compare.py [SPEC.yaml] [--dataset cora|FILE.npz] [--epochs N] [--repeat R]
                            [--students K] [--device auto|cpu|cuda] [--float64] [--out results.json]

Both implementations train the same spec (data, seed, hyper-parameters, so identical initial weights).
Each run happens in its own fresh 'spawn' subprocess, so that peak RSS belongs to that run alone, and
the order alternates across repeats so that neither always runs on a cold (or warm) machine. The first
epoch of every run is a warm-up and is left out of the timings. The first-epoch losses of both must
agree up to float tolerance: same math written twice, which is what makes the timing comparison fair.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import multiprocessing as mp
import os
import platform
import resource
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

os.environ.setdefault("DGLBACKEND", "pytorch")
ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # `python bench/compare.py` puts bench/, not the repo root, on the path
    sys.path.insert(0, str(ROOT))

import yaml  # noqa: E402

from alignahead.spec import JobSpec  # noqa: E402

CORA = "/work/shared/datasets/cora.npz"
IMPLS = ("reference", "ours")
# Losses agree when |a - b| <= RTOL * |a| + ATOL. The absolute part is for the distillation term: a KL
# between near-equal distributions is a small difference of logs (~1e-4 for GCN students on Cora), so in
# float32 it carries an absolute rounding error of ~1e-9 whatever its size.
LOSS_RTOL, LOSS_ATOL = 1e-5, 1e-7  # float32, first epoch; later epochs drift apart by rounding alone
LOSS_RTOL_F64, LOSS_ATOL_F64 = 1e-10, 1e-13  # float64, every epoch: ~1e-14 relative is typical

# A PPI-like inductive setting sized for ~1 s per epoch on 2 CPU cores: several graphs in
# minibatches of 2, the paper's students (GAT, 4 hidden layers of 64 units x 3 heads, residual).
DEFAULT_SPEC: dict[str, Any] = {
    "name": "bench-synthetic-gat",
    "dataset": {
        "name": "synthetic",
        "synthetic": {
            "num_nodes": 1000,
            "num_classes": 8,
            "num_features": 50,
            "avg_degree": 10,
            "homophily": 0.7,
            "num_graphs": 10,
        },
    },
    "students": [
        {"arch": "gat", "count": 2, "hidden_layers": 4, "hidden_size": 64, "heads": 3, "out_heads": 3, "residual": True}
    ],
    "distillation": {"strategy": "alignahead", "alpha": 1.0, "tau": 100.0, "schedule": "alternating"},
    "training": {"epochs": 11, "lr": 0.005, "batch_size": 2, "eval_every": 5, "seed": 0, "device": "auto"},
}


# --- building the spec ---------------------------------------------------------------------------


def build_spec(args: argparse.Namespace) -> JobSpec:
    """The spec file (or the default) with the command line's overrides applied."""
    data = yaml.safe_load(Path(args.spec).read_text()) if args.spec else json.loads(json.dumps(DEFAULT_SPEC))
    if args.dataset:
        path = CORA if args.dataset == "cora" else args.dataset
        data["dataset"] = {"name": "npz", "path": path}
    training = data.setdefault("training", {})
    if args.epochs is not None:
        training["epochs"] = args.epochs
    if args.device is not None:
        training["device"] = args.device
    if args.students is not None:  # k copies of the first student configuration
        data["students"] = [{**data.get("students", [{}])[0], "count": args.students}]
    spec = JobSpec.model_validate(data)
    if spec.distillation.schedule != "alternating":
        raise SystemExit("the reference mirrors the published code, which uses the 'alternating' schedule only")
    if spec.training.epochs < 2:
        raise SystemExit("need at least 2 epochs: the first is a warm-up and is not timed")
    return spec


# --- one run, inside its own subprocess ------------------------------------------------------------


def _current_rss_kib() -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def _fingerprint(dataset: Any) -> str:
    """A hash of every graph's edges, features and masks: proves both runs trained on the same data."""
    h = hashlib.sha256()
    for graphs in (dataset.train, dataset.val, dataset.test):
        for g in graphs:
            src, dst = g.edges()
            for t in (src, dst, *(g.ndata[k] for k in sorted(g.ndata))):
                h.update(t.contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def _run_ours(spec: JobSpec, dataset: Any) -> dict[str, Any]:
    """Drive the Trainer one epoch at a time so that epochs are timed exactly as in the reference."""
    import torch

    from alignahead.trainer import Callbacks, History, Trainer
    from bench.reference import init_checksum

    history = History()
    trainer = Trainer(spec, dataset, Callbacks(on_epoch=history))
    checksum = init_checksum(trainer.students)
    evaluate, spent = trainer.evaluate, [0.0]

    def timed_evaluate(index: int) -> dict[str, float | None]:  # instance-level wrapper, Trainer untouched
        t0 = time.perf_counter()
        try:
            return evaluate(index)
        finally:
            spent[0] += time.perf_counter() - t0

    trainer.evaluate = timed_evaluate  # type: ignore[method-assign]
    cuda = trainer.device.type == "cuda"
    epoch_seconds, eval_seconds = [], []
    for epoch in range(1, spec.training.epochs + 1):
        spent[0] = 0.0
        if cuda:
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        trainer.run(stop_after=epoch)
        if cuda:
            torch.cuda.synchronize()
        epoch_seconds.append(time.perf_counter() - t0)
        eval_seconds.append(spent[0])
    epochs = spec.training.epochs
    losses = [
        [(r.loss, r.task_loss, r.distill_loss) for r in sorted(history.rows, key=lambda r: r.student) if r.epoch == e]
        for e in range(1, epochs + 1)
    ]
    last = {r.student: r for r in history.rows if r.epoch == epochs}
    students = [
        {
            "best_val": s.best_val,
            "best_epoch": s.best_epoch,
            "test_at_best": s.test_at_best,
            "final_val": last[s.student].val_score,
            "final_test": last[s.student].test_score,
        }
        for s in trainer.summaries
    ]
    return {
        "epoch_seconds": epoch_seconds,
        "eval_seconds": eval_seconds,
        "losses": losses,
        "init_checksum": checksum,
        "students": students,
    }


def run_one(impl: str, spec_json: str, float64: bool = False) -> dict[str, Any]:
    """Load the data, then train with one implementation; memory is measured from after the loading.

    `float64` trains both in double precision: float32 rounding then no longer hides a real difference
    in the math, so losses must agree to ~1e-12 over every epoch, not just the first.
    """
    import torch

    from alignahead.datasets import load_dataset
    from alignahead.trainer import resolve_device
    from bench.reference import run_reference

    spec = JobSpec.model_validate_json(spec_json)
    dataset = load_dataset(spec.dataset, seed=spec.training.seed)
    if float64:
        torch.set_default_dtype(torch.float64)  # students are built after this, in both implementations
        for graphs in (dataset.train, dataset.val, dataset.test):
            for g in graphs:
                for key in ("feat", "label"):
                    if g.ndata[key].is_floating_point():  # float labels: multilabel targets
                        g.ndata[key] = g.ndata[key].double()
    device = resolve_device(spec.training.device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    rss_before = _current_rss_kib()
    before = resource.getrusage(resource.RUSAGE_SELF)
    t0 = time.perf_counter()
    result = run_reference(spec, dataset) if impl == "reference" else _run_ours(spec, dataset)
    result["total_seconds"] = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_SELF)
    peak = after.ru_maxrss  # KiB on Linux; includes the loading
    result.update(
        # where CPU time went besides the math: allocator churn shows up as page faults and system time
        user_cpu_seconds=after.ru_utime - before.ru_utime,
        system_cpu_seconds=after.ru_stime - before.ru_stime,
        minor_page_faults=after.ru_minflt - before.ru_minflt,
        impl=impl,
        data_fingerprint=_fingerprint(dataset),
        peak_rss_mib=peak / 1024,
        peak_rss_delta_mib=max(0, peak - rss_before) / 1024,
        cuda_peak_mib=torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda" else None,
    )
    return result


def run_isolated(impl: str, spec: JobSpec, float64: bool = False) -> dict[str, Any]:
    """`run_one` in a fresh spawned interpreter: nothing allocated by an earlier run inflates its peak."""
    with ProcessPoolExecutor(max_workers=1, mp_context=mp.get_context("spawn")) as pool:
        return pool.submit(run_one, impl, spec.model_dump_json(), float64).result()


# --- summary -------------------------------------------------------------------------------------------


def machine() -> dict[str, Any]:
    import dgl
    import torch

    cpu = platform.processor() or "unknown CPU"
    try:
        with open("/proc/cpuinfo") as fh:
            cpu = next((ln.split(":", 1)[1].strip() for ln in fh if ln.startswith("model name")), cpu)
    except OSError:
        pass
    info: dict[str, Any] = {
        "cpu": cpu,
        "cpu_cores": len(os.sched_getaffinity(0)),
        "torch_threads": torch.get_num_threads(),
        "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        "torch": torch.__version__,
        "dgl": dgl.__version__,
        "python": platform.python_version(),
    }
    return info


def _rel(a: float, b: float) -> float:
    return abs(a - b) / max(abs(a), abs(b), 1e-12)


def loss_agreement(ref: dict[str, Any], ours: dict[str, Any], float64: bool = False) -> dict[str, Any]:
    """Max relative difference of (loss, label, distill) per student: first epoch, and over all epochs.

    In float32 only the first epoch is judged: training amplifies rounding differences (the two sum
    the KL terms in different orders), so later epochs drift apart by ~1e-4 without any bug. In
    float64 that drift vanishes, and every epoch is judged.
    """
    rtol, atol = (LOSS_RTOL_F64, LOSS_ATOL_F64) if float64 else (LOSS_RTOL, LOSS_ATOL)
    pairs = [  # (epoch, reference value, our value)
        (e, a, b)
        for e, (er, eo) in enumerate(zip(ref["losses"], ours["losses"], strict=True))
        for sr, so in zip(er, eo, strict=True)
        for a, b in zip(sr, so, strict=True)
    ]
    judged = [(a, b) for e, a, b in pairs if float64 or e == 0]
    first = [(a, b) for e, a, b in pairs if e == 0]
    return {
        "first_epoch_max_rel": max(_rel(a, b) for a, b in first),
        "first_epoch_max_abs": max(abs(a - b) for a, b in first),
        "all_epochs_max_rel": max(_rel(a, b) for _, a, b in pairs),
        "rtol": rtol,
        "atol": atol,
        "judged": "all epochs" if float64 else "first epoch",
        "agree": all(abs(a - b) <= rtol * abs(a) + atol for a, b in judged),
    }


def summarise(runs: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """Timings pooled over repeats (warm-up epochs dropped); memory as the median over repeats."""
    out: dict[str, Any] = {}
    for impl, rs in runs.items():
        train = [e - v for r in rs for e, v in zip(r["epoch_seconds"][1:], r["eval_seconds"][1:], strict=True)]
        full = [e for r in rs for e in r["epoch_seconds"][1:]]
        out[impl] = {
            "train_mean_s": statistics.mean(train),
            "train_median_s": statistics.median(train),
            "train_min_s": min(train),
            "epoch_mean_s": statistics.mean(full),
            "epoch_median_s": statistics.median(full),
            "peak_rss_delta_mib": statistics.median(r["peak_rss_delta_mib"] for r in rs),
            "peak_rss_mib": statistics.median(r["peak_rss_mib"] for r in rs),
            "system_cpu_s": statistics.median(r["system_cpu_seconds"] for r in rs),
            "minor_page_faults_k": statistics.median(r["minor_page_faults"] for r in rs) / 1000,
            "cuda_peak_mib": rs[0]["cuda_peak_mib"] and statistics.median(r["cuda_peak_mib"] for r in rs),
            "students": rs[0]["students"],
        }
    return out


def _fmt(v: float | None, digits: int = 4) -> str:
    return "-" if v is None else f"{v:.{digits}f}"


def _ratio(a: float | None, b: float | None) -> str:
    return "-" if a is None or b is None or b == 0 else f"{a / b:.3f}"


def print_report(spec: JobSpec, info: dict[str, Any], summary: dict[str, Any], checks: dict[str, Any]) -> None:
    s0, repeat = spec.students[0], checks["repeat"]
    dev = info["gpu"] or f"{info['cpu']} ({info['cpu_cores']} cores, {info['torch_threads']} torch threads)"
    print(f"device: {dev}; torch {info['torch']}, dgl {info['dgl']}, python {info['python']}")
    print(
        f"spec: {spec.name or '-'}; dataset {spec.dataset.name}; k={spec.num_students} students "
        f"({', '.join(s.arch for s in spec.expanded_students())}), {s0.hidden_layers} hidden layers; "
        f"strategy {spec.distillation.strategy}; {spec.training.epochs} epochs (1st is warm-up, not timed) "
        f"x {repeat} repeat(s), each run in a fresh process{'; float64' if checks['float64'] else ''}"
    )
    ref, ours = summary["reference"], summary["ours"]
    rows: list[tuple[str, float | None, float | None, int]] = [
        ("train s/epoch, mean", ref["train_mean_s"], ours["train_mean_s"], 4),
        ("train s/epoch, median", ref["train_median_s"], ours["train_median_s"], 4),
        ("train s/epoch, min", ref["train_min_s"], ours["train_min_s"], 4),
        ("epoch s incl. eval, mean", ref["epoch_mean_s"], ours["epoch_mean_s"], 4),
        ("epoch s incl. eval, median", ref["epoch_median_s"], ours["epoch_median_s"], 4),
        ("peak RSS delta, MiB", ref["peak_rss_delta_mib"], ours["peak_rss_delta_mib"], 1),
        ("peak RSS, MiB", ref["peak_rss_mib"], ours["peak_rss_mib"], 1),
        ("system CPU s, whole run", ref["system_cpu_s"], ours["system_cpu_s"], 2),
        ("minor page faults (k)", ref["minor_page_faults_k"], ours["minor_page_faults_k"], 1),
    ]
    if ref["cuda_peak_mib"] is not None:
        rows.append(("CUDA max allocated, MiB", ref["cuda_peak_mib"], ours["cuda_peak_mib"], 1))
    for i, (sr, so) in enumerate(zip(ref["students"], ours["students"], strict=True)):
        rows.append((f"student {i} best val", sr["best_val"], so["best_val"], 4))
        rows.append((f"student {i} test at best val", sr["test_at_best"], so["test_at_best"], 4))
    print(f"\n{'':30} {'reference':>12} {'ours':>12} {'ours/ref':>9}")
    for label, a, b, digits in rows:
        print(f"{label:30} {_fmt(a, digits):>12} {_fmt(b, digits):>12} {_ratio(b, a):>9}")
    la = checks["losses"]
    print(
        f"\n{la['judged']} losses agree (rtol {la['rtol']:g}, atol {la['atol']:g}): {'yes' if la['agree'] else 'NO'}"
        f"\n  first epoch: max rel. diff {la['first_epoch_max_rel']:.2e}, max abs. diff "
        f"{la['first_epoch_max_abs']:.2e}; all epochs: max rel. diff {la['all_epochs_max_rel']:.2e}"
    )
    print(f"identical initial weights: {'yes' if checks['same_init'] else 'NO'}")
    print(f"identical data: {'yes' if checks['same_data'] else 'NO'}")
    print(f"scores identical across repeats: {'yes' if checks['repeatable'] else 'no'}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("spec", nargs="?", help="a job spec (YAML); default: a synthetic PPI-like GAT setting")
    p.add_argument("--dataset", help="'cora' (the shared Cora npz) or a path to an .npz; replaces the spec's")
    p.add_argument("--epochs", type=int, help="epochs per run, the first being an untimed warm-up")
    p.add_argument("--repeat", type=int, default=1, help="runs per implementation, order alternating")
    p.add_argument("--students", type=int, help="k copies of the spec's first student")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"])
    p.add_argument("--float64", action="store_true", help="train in double precision (a correctness check)")
    p.add_argument("--out", help="write every run's raw figures and the summary to this JSON file")
    args = p.parse_args(argv)
    spec = build_spec(args)

    runs: dict[str, list[dict[str, Any]]] = {impl: [] for impl in IMPLS}
    for r in range(args.repeat):
        order = IMPLS if r % 2 == 0 else IMPLS[::-1]
        for impl in order:
            print(f"repeat {r + 1}/{args.repeat}: {impl} ...", file=sys.stderr, flush=True)
            res = run_isolated(impl, spec, args.float64)
            print(f"  {res['total_seconds']:.1f} s", file=sys.stderr, flush=True)
            runs[impl].append(res)

    everything = runs["reference"] + runs["ours"]
    checks = {
        "repeat": args.repeat,
        "float64": args.float64,
        "losses": loss_agreement(runs["reference"][0], runs["ours"][0], args.float64),
        "same_init": len({json.dumps(r["init_checksum"]) for r in everything}) == 1,
        "same_data": len({r["data_fingerprint"] for r in everything}) == 1,
        "repeatable": all(len({json.dumps(r["students"]) for r in rs}) == 1 for rs in runs.values()),
    }
    info = machine()
    summary = summarise(runs)
    print_report(spec, info, summary, checks)
    if args.out:
        payload = {"spec": spec.model_dump(), "machine": info, "checks": checks, "summary": summary, "runs": runs}
        Path(args.out).write_text(json.dumps(payload, indent=2))
        print(f"\nwrote {args.out}")
    return 0 if checks["losses"]["agree"] and checks["same_init"] and checks["same_data"] else 1


if __name__ == "__main__":
    sys.exit(main())
