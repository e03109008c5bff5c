"""Distillation against training the students alone, and today's core against the DGL-era one: one
command, every variant side by side.

    python bench/compare.py                      # the suite (see DEFAULT_SUITE), 1 repeat
    python bench/compare.py --repeat 2 --out results.json
    python bench/compare.py --setting ppi-batch:2 --variants none,alternating
    python bench/compare.py SPEC.yaml [--dataset cora|FILE.npz] [--students K]   # any spec, one setting
    python bench/compare.py --setting small:3 --float64 --epochs 4              # correctness mode
    python bench/compare.py --device cuda --precision bf16                      # mixed precision

Variants, each run in its own fresh 'spawn' subprocess, their order alternating across repeats:
- `none`: the same students trained alone (strategy none): the floor every ratio is taken against;
- `none-eager`: the floor with every kernel eager (ALIGNAHEAD_COMPILE=off), `none-compiled` with every
  one compiled (on); `none` has the default policy (auto);
- `dgl-floor`: the floor of the DGL-era students (bench/dgl_students.py) in bench/reference.py's loop
  with strategy none: what the plain-PyTorch core replaced (needs DGL);
- `alternating`, `simultaneous`: our Trainer with strategy alignahead in that schedule;
- `alternating-reuse`, `alternating+reuse`: alternating with ALIGNAHEAD_REUSE_FORWARD_MB at 0 (each
  refresh a no-grad forward of its own) and unbounded (every refresh forward kept as the student's next
  training forward, whatever the memory); `alternating` has the default (kept where k - 1 students'
  activations take at most 256 MiB). Not in the default list;
- `reference`: bench/reference.py, a plain re-implementation of the published loop (alternating), on
  the DGL-era students.
All start from identical weights on identical data (checked). Epoch time is the median of the timed
epochs (the first is a warm-up and includes the one-off compilation of the fused kernel), evaluation
excluded. Memory is the peak RSS during training (VmHWM, reset after data loading) minus the RSS
before it on the CPU, `torch.cuda.max_memory_allocated` on CUDA, on a warm process: the kernels that
run compiled are compiled (their first-use check) before that baseline, as on a worker that ran a job
before, and what compiling left resident is shown apart (`compile MiB`). The first-epoch losses of `reference`
and `alternating`, and of `dgl-floor` and `none`, must agree up to float32 rounding, every epoch's in
`--float64`; their scores are printed side by side.
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

CORA = ROOT.parent / "shared" / "datasets" / "cora.npz"  # the read-only folder beside the checkout
VARIANTS = (
    "none",
    "none-eager",
    "none-compiled",
    "dgl-floor",
    "alternating",
    "simultaneous",
    "reference",
    "alternating-reuse",
    "alternating+reuse",
)
DEFAULT_VARIANTS = ("none", "none-eager", "dgl-floor", "alternating", "simultaneous")
REUSE_MB = {"alternating-reuse": 0.0, "alternating+reuse": float(2**40)}  # else the default
COMPILE = {"none-eager": "off", "none-compiled": "on"}  # else the default policy (or --compile)
DGL_VARIANTS = ("dgl-floor", "reference")  # the DGL-era students in bench/reference.py's loop
# Losses agree when |a - b| <= RTOL * |a| + ATOL. The absolute part is for the distillation term: a KL
# between near-equal distributions is a small difference of logs (~1e-4 for GCN students on Cora), so in
# float32 it carries an absolute rounding error of ~1e-9 whatever its size.
LOSS_RTOL, LOSS_ATOL = 1e-5, 1e-7  # float32, first epoch; later epochs drift apart by rounding alone
LOSS_RTOL_F64, LOSS_ATOL_F64 = 1e-10, 1e-13  # float64, every epoch: ~1e-14 relative is typical

# The paper's students: GAT, 4 hidden layers of 64 units x 3 heads, 3 output heads, residual, dropout 0.
PAPER_GAT = {"arch": "gat", "hidden_layers": 4, "hidden_size": 64, "heads": 3, "out_heads": 3, "residual": True}
# GCN and GraphSAGE students of the same depth and hidden width (192 = 64 x 3 heads)
PAPER_GCN = {"arch": "gcn", "hidden_layers": 4, "hidden_size": 192, "residual": True}
PAPER_SAGE = {"arch": "sage", "hidden_layers": 4, "hidden_size": 192, "residual": True, "aggregator": "mean"}


def _synthetic(name: str, nodes: int, features: int, classes: int, degree: float, graphs: int = 1) -> dict[str, Any]:
    return {
        "name": name,
        "dataset": {
            "name": "synthetic",
            "synthetic": {
                "num_nodes": nodes,
                "num_features": features,
                "num_classes": classes,
                "avg_degree": degree,
                "homophily": 0.7,
                "num_graphs": graphs,
            },
        },
        "students": [PAPER_GAT],
        "distillation": {"strategy": "alignahead", "alpha": 1.0, "tau": 100.0, "schedule": "alternating"},
        "training": {"epochs": 5, "lr": 0.005, "batch_size": 2, "eval_every": 1, "seed": 0, "device": "auto"},
    }


# name -> spec (k comes from the setting). Evaluation every epoch, as by default: timed apart ("+eval").
SETTINGS: dict[str, dict[str, Any]] = {
    # a PPI minibatch of 2 graphs as one graph: 4,500 nodes, ~122,000 edges with self-loops
    "ppi-batch": _synthetic("ppi-batch", 4500, 50, 10, 26.5),
    # Coauthor Physics' size: 34,493 nodes, ~530,000 edges with self-loops, 500 features, 5 classes
    "physics": {
        **_synthetic("physics", 34493, 500, 5, 14.37),
        "training": {"epochs": 3, "lr": 0.005, "eval_every": 1000, "seed": 0, "device": "auto"},
    },  # fmt: skip
    # the same graph with GCN and GraphSAGE students
    "ppi-batch-gcn": {**_synthetic("ppi-batch", 4500, 50, 10, 26.5), "students": [PAPER_GCN]},
    "ppi-batch-sage": {**_synthetic("ppi-batch", 4500, 50, 10, 26.5), "students": [PAPER_SAGE]},
    # PPI-like inductive data: 10 graphs of 1,000 nodes in shuffled minibatches of 2 (3 steps per pass)
    "multigraph": _synthetic("multigraph", 1000, 50, 8, 10, graphs=10),
    # seconds per run: for tests and quick checks
    "small": {
        **_synthetic("small", 300, 16, 4, 8, graphs=5),
        "students": [{"arch": "gat", "hidden_layers": 3, "hidden_size": 8, "heads": 2}],
    },  # fmt: skip
}
DEFAULT_SUITE = ("ppi-batch:2", "ppi-batch:4", "physics:2", "ppi-batch-gcn:2", "ppi-batch-sage:2")


def setting_spec(name: str, k: int, epochs: int | None, device: str | None, precision: str | None = None) -> JobSpec:
    if name not in SETTINGS:
        raise SystemExit(f"unknown setting {name!r}; choose from {', '.join(SETTINGS)}")
    data = json.loads(json.dumps(SETTINGS[name]))
    data["students"] = [{**data["students"][0], "count": k}]
    return _finish(data, epochs, device, precision)


def file_spec(args: argparse.Namespace) -> JobSpec:
    """A spec file with the command line's overrides applied."""
    data = yaml.safe_load(Path(args.spec).read_text())
    if args.dataset:
        data["dataset"] = {"name": "npz", "path": str(CORA if args.dataset == "cora" else args.dataset)}
    if args.students is not None:  # k copies of the first student configuration
        data["students"] = [{**data.get("students", [{}])[0], "count": args.students}]
    data.setdefault("distillation", {})["schedule"] = "alternating"
    return _finish(data, args.epochs, args.device, args.precision)


def _finish(data: dict[str, Any], epochs: int | None, device: str | None, precision: str | None = None) -> JobSpec:
    training = data.setdefault("training", {})
    if epochs is not None:
        training["epochs"] = epochs
    if device is not None:
        training["device"] = device
    if precision is not None:
        training["precision"] = precision
    spec = JobSpec.model_validate(data)
    if spec.training.epochs < 2:
        raise SystemExit("need at least 2 epochs: the first is a warm-up and is not timed")
    if spec.distillation.strategy == "none":
        raise SystemExit("give a distilling spec; the 'none' variant is derived from it")
    return spec


def variant_spec(spec: JobSpec, variant: str) -> JobSpec:
    """The spec that `variant` trains: the same students, seed and data, another strategy or schedule."""
    d = spec.distillation
    if variant.startswith("none") or variant == "dgl-floor":
        d = d.model_copy(update={"strategy": "none"})
    elif variant in VARIANTS:
        d = d.model_copy(update={"schedule": "simultaneous" if variant == "simultaneous" else "alternating"})
    else:
        raise ValueError(f"unknown variant {variant!r}")
    out = spec.model_copy(update={"distillation": d})
    if variant in DGL_VARIANTS:  # the DGL-era code has no mixed precision
        out = out.model_copy(update={"training": out.training.model_copy(update={"precision": "fp32"})})
    return out


# --- one run, inside its own subprocess ------------------------------------------------------------


def _status_kib(field: str) -> int:
    """A field of /proc/self/status in KiB: VmRSS (resident now) or VmHWM (the peak since the last reset)."""
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(f"{field}:"):
                return int(line.split()[1])
    return 0


def _reset_peak_rss() -> None:
    """Start VmHWM afresh (Linux >= 4.0), so that the peak measured is training's, not data loading's:
    generating a large synthetic graph peaks above what it keeps."""
    with open("/proc/self/clear_refs", "w") as fh:
        fh.write("5")


def _fingerprint(dataset: Any) -> str:
    """A hash of every graph's edges, features and masks: proves both runs trained on the same data."""
    h = hashlib.sha256()
    for graphs in (dataset.train, dataset.val, dataset.test):
        for g in graphs:
            src, dst = g.edges()
            for t in (src, dst, *(g.ndata[k] for k in sorted(g.ndata))):
                h.update(t.contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def init_checksum(models: list[Any]) -> list[float]:
    """Sum of every parameter per student: equal lists mean (in practice) identical initial weights."""
    return [float(sum(p.detach().double().sum() for p in m.parameters())) for m in models]


def _run_ours(spec: JobSpec, dataset: Any, reuse_forward_mb: float | None = None) -> dict[str, Any]:
    """Drive the Trainer one epoch at a time so that epochs are timed exactly as in the reference."""
    import torch

    from alignahead import kernels
    from alignahead.trainer import Callbacks, History, Trainer

    history = History()
    trainer = Trainer(spec, dataset, Callbacks(on_epoch=history), reuse_forward_mb=reuse_forward_mb)
    checksum = init_checksum(trainer.students)
    evaluate, spent = trainer.evaluate, [0.0, 0.0]

    def timed_evaluate(index: int) -> dict[str, float | None]:  # instance-level wrapper, Trainer untouched
        t0, c0 = time.perf_counter(), time.process_time()
        try:
            return evaluate(index)
        finally:
            spent[0] += time.perf_counter() - t0
            spent[1] += time.process_time() - c0

    trainer.evaluate = timed_evaluate  # type: ignore[method-assign]
    cuda = trainer.device.type == "cuda"
    epoch_seconds, eval_seconds, epoch_cpu, eval_cpu, epoch_faults = [], [], [], [], []
    for epoch in range(1, spec.training.epochs + 1):
        spent[:] = [0.0, 0.0]
        if cuda:
            torch.cuda.synchronize()
        f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        t0, c0 = time.perf_counter(), time.process_time()
        trainer.run(stop_after=epoch)
        if cuda:
            torch.cuda.synchronize()
        epoch_seconds.append(time.perf_counter() - t0)
        epoch_cpu.append(time.process_time() - c0)
        eval_seconds.append(spent[0])
        eval_cpu.append(spent[1])
        epoch_faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0)
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
        "epoch_cpu_seconds": epoch_cpu,
        "eval_cpu_seconds": eval_cpu,
        "epoch_minor_faults": epoch_faults,
        "losses": losses,
        "init_checksum": checksum,
        "students": students,
        "compile_mode": kernels.compile_mode(),
        "compiled_kernels": {k.name: k.compiled_uses() for k in kernels.kernels() if k.compiled_uses()},
        "compile_seconds": kernels.compile_seconds(),
    }


def run_one(
    impl: str,
    spec_json: str,
    float64: bool = False,
    threads: int = 1,
    variant: str = "",
    compile_mode: str | None = None,
) -> dict[str, Any]:
    """Load the data, then train with one variant; memory is measured from after the loading.
    `compile_mode`: alignahead.kernels' policy (None: the environment's, by default auto).

    `float64` trains both in double precision: float32 rounding then no longer hides a real difference
    in the math, so losses must agree to ~1e-12 over every epoch, not just the first.
    """
    import torch

    from alignahead import kernels
    from alignahead.datasets import load_dataset
    from alignahead.trainer import resolve_device

    torch.set_num_threads(threads)
    kernels.set_compile_mode(compile_mode)
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
    # a worker compiles its kernels once and keeps them for every later job: compile them (their first-use
    # check) before the baseline, so that memory is what a job adds on a warm worker; what compiling left
    # resident is reported apart ("compile MiB"), and its time is in "compile s"
    before_compile = _status_kib("VmRSS")
    dtype = torch.get_default_dtype()
    warm = [k.name for k in kernels.kernels() if impl != "reference" and k.compiled_for(device, dtype)]
    compile_mib = (_status_kib("VmRSS") - before_compile) / 1024
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    rss_before = _status_kib("VmRSS")
    _reset_peak_rss()
    before = resource.getrusage(resource.RUSAGE_SELF)
    t0 = time.perf_counter()
    if impl == "reference":
        from bench.reference import run_reference  # DGL: imported only for the variants that run it

        result = run_reference(spec, dataset)
    else:
        result = _run_ours(spec, dataset, reuse_forward_mb=REUSE_MB.get(variant))
    result["total_seconds"] = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_SELF)
    peak = _status_kib("VmHWM")  # since the reset: training alone
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
        compile_mib=compile_mib,
        warm_kernels=warm,
    )
    return result


def run_isolated(
    variant: str, spec: JobSpec, float64: bool = False, threads: int = 1, compile_mode: str | None = None
) -> dict[str, Any]:
    """`run_one` in a fresh spawned interpreter: nothing allocated by an earlier run inflates its peak."""
    impl = "reference" if variant in DGL_VARIANTS else "ours"
    spec_json = variant_spec(spec, variant).model_dump_json()
    mode = COMPILE.get(variant, compile_mode)
    with ProcessPoolExecutor(max_workers=1, mp_context=mp.get_context("spawn")) as pool:
        result = pool.submit(run_one, impl, spec_json, float64, threads, variant, mode).result()
    result["variant"] = variant
    return result


# --- summary -------------------------------------------------------------------------------------------


def _version(package: str) -> str | None:
    import importlib.metadata

    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def machine() -> dict[str, Any]:
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
        "dgl": _version("dgl"),
        "python": platform.python_version(),
    }
    return info


def _rel(a: float, b: float) -> float:
    return abs(a - b) / max(abs(a), abs(b), 1e-12)


def loss_agreement(ref: dict[str, Any], ours: dict[str, Any], float64: bool = False) -> dict[str, Any]:
    """Max relative difference of (loss, label, distill) per student: first epoch, and over all epochs.

    In float32 only the first epoch is judged: training amplifies rounding differences (the two sum
    the KL terms in different orders, and ours computes the edge distances with another kernel), so
    later epochs drift apart without any bug. In float64 that drift vanishes, and every epoch is judged.
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


def summarise(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Per variant: timings pooled over repeats (warm-up epochs dropped), memory as the median."""
    out: dict[str, Any] = {}
    for variant in dict.fromkeys(r["variant"] for r in runs):
        rs = [r for r in runs if r["variant"] == variant]
        train = [e - v for r in rs for e, v in zip(r["epoch_seconds"][1:], r["eval_seconds"][1:], strict=True)]
        cpu = [e - v for r in rs for e, v in zip(r["epoch_cpu_seconds"][1:], r["eval_cpu_seconds"][1:], strict=True)]
        full = [e for r in rs for e in r["epoch_seconds"][1:]]
        cuda = rs[0]["cuda_peak_mib"] is not None
        out[variant] = {
            "train_median_s": statistics.median(train),
            "train_min_s": min(train),
            "train_cpu_median_s": statistics.median(cpu),
            "epoch_median_s": statistics.median(full),
            "memory_mib": statistics.median(r["cuda_peak_mib" if cuda else "peak_rss_delta_mib"] for r in rs),
            "peak_rss_mib": statistics.median(r["peak_rss_mib"] for r in rs),
            # allocator churn: pages faulted in per timed epoch (the warm-up's compilation left out)
            "minor_page_faults_k": statistics.median(f for r in rs for f in r["epoch_minor_faults"][1:]) / 1000,
            "system_cpu_s": statistics.median(r["system_cpu_seconds"] for r in rs),
            "compile_s": max(r.get("compile_seconds", 0.0) for r in rs),
            "compile_mib": max(r.get("compile_mib", 0.0) for r in rs),
            "cuda": cuda,
            "students": rs[0]["students"],
        }
    return out


def checks(runs: list[dict[str, Any]], float64: bool, judged: bool = True) -> dict[str, Any]:
    """`judged` False (our variants in bf16/fp16): losses are compared and shown, not required to agree."""
    first = {r["variant"]: r for r in reversed(runs)}  # the first run of each variant
    out: dict[str, Any] = {
        "same_init": len({json.dumps(r["init_checksum"]) for r in runs}) == 1,
        "same_data": len({r["data_fingerprint"] for r in runs}) == 1,
        "repeatable": all(len({json.dumps(r["students"]) for r in runs if r["variant"] == v}) == 1 for v in first),
    }
    if "reference" in first and "alternating" in first:
        out["losses"] = loss_agreement(first["reference"], first["alternating"], float64)
    if "dgl-floor" in first and "none" in first:  # the DGL-era students trained alone against ours
        out["floor_losses"] = loss_agreement(first["dgl-floor"], first["none"], float64)
    if not judged:
        for key in ("losses", "floor_losses"):
            if key in out:
                out[key].update(judged="not judged (mixed precision against float32)", agree=True)
    return out


def _fmt(v: float | None, digits: int = 4) -> str:
    return "-" if v is None else f"{v:.{digits}f}"


def _ratio(a: float | None, b: float | None) -> str:
    return "-" if a is None or b is None or b == 0 else f"{a / b:.2f}x"


def print_setting(label: str, spec: JobSpec, graph: str, summary: dict[str, Any], check: dict[str, Any]) -> None:
    s0 = spec.students[0]
    print(
        f"\n## {label}: k={spec.num_students} {s0.arch.upper()} students ({s0.hidden_layers} hidden layers of "
        f"{s0.hidden_size} x {s0.heads} heads), {graph}; {spec.training.epochs} epochs (1st untimed)"
    )
    floor = summary.get("none")
    mem = "CUDA MiB" if any(r.get("cuda") for r in summary.values()) else "peak RSS +MiB"
    print(
        f"{'variant':17} {'s/epoch':>8} {'x none':>7} {'CPU s':>7} {'x none':>7} {'+eval s':>8} {'x none':>7} "
        f"{mem:>14} {'x none':>7} {'faults/ep k':>11} {'compile s':>9} {'compile MiB':>11}"
    )
    for variant, row in summary.items():

        def cell(key: str, digits: int = 3, row: dict = row) -> str:
            return f"{_fmt(row[key], digits):>{7 if digits == 3 else 14}} {_ratio(row[key], floor and floor[key]):>7}"

        print(
            f"{variant:17} {_fmt(row['train_median_s'], 3):>8} "
            f"{_ratio(row['train_median_s'], floor and floor['train_median_s']):>7} {cell('train_cpu_median_s')} "
            f"{_fmt(row['epoch_median_s'], 3):>8} "
            f"{_ratio(row['epoch_median_s'], floor and floor['epoch_median_s']):>7} "
            f"{cell('memory_mib', 0)} {_fmt(row['minor_page_faults_k'], 1):>11} {_fmt(row['compile_s'], 1):>9} "
            f"{_fmt(row['compile_mib'], 0):>11}"
        )
    print(
        "s/epoch: wall time of training, evaluation excluded (median); CPU s: the same in CPU time, which other "
        "processes on the machine disturb less; +eval s: wall time with evaluation; faults/ep: minor page faults "
        "per timed epoch (allocator churn)"
    )
    print("scores (best val / test at best val, per student):")
    for variant, row in summary.items():
        scores = "  ".join(f"{_fmt(s['best_val'])}/{_fmt(s['test_at_best'])}" for s in row["students"])
        print(f"  {variant:17} {scores}")
    flags = [f"identical initial weights: {'yes' if check['same_init'] else 'NO'}",
             f"identical data: {'yes' if check['same_data'] else 'NO'}",
             f"scores identical across repeats: {'yes' if check['repeatable'] else 'no'}"]  # fmt: skip
    print("; ".join(flags))
    for key, what in (("losses", "reference vs alternating"), ("floor_losses", "dgl-floor vs none")):
        if key in check:
            la = check[key]
            print(
                f"{what}, {la['judged']} losses agree (rtol {la['rtol']:g}, atol {la['atol']:g}): "
                f"{'yes' if la['agree'] else 'NO'}; first epoch max rel. diff {la['first_epoch_max_rel']:.2e} "
                f"(abs. {la['first_epoch_max_abs']:.2e}), all epochs {la['all_epochs_max_rel']:.2e}"
            )


def markdown_setting(label: str, graph: str, summary: dict[str, Any]) -> str:
    """One setting's figures as a Markdown table (ratios against `none`)."""
    floor = summary.get("none")
    lines = [
        f"**{label}** ({graph})",
        "",
        "| variant | train s/epoch | x none | CPU s/epoch | x none | with evaluation, x none | memory MiB | x none "
        "| compile s | compile MiB | best val / test at best, per student |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for variant, row in summary.items():
        scores = " ".join(f"{_fmt(s['best_val'])}/{_fmt(s['test_at_best'])}" for s in row["students"])

        def x(key: str, row: dict = row) -> str:
            return _ratio(row[key], floor and floor[key])

        cells = [
            f"`{variant}`",
            f"{row['train_median_s']:.3f}",
            x("train_median_s"),
            f"{row['train_cpu_median_s']:.3f}",
            x("train_cpu_median_s"),
            x("epoch_median_s"),
            f"{row['memory_mib']:.0f}",
            x("memory_mib"),
            f"{row['compile_s']:.1f}",
            f"{row['compile_mib']:.0f}",
            scores,
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


# (numerator variant, denominator variant, measure, target or None: stated; settings it applies to or None: all)
TARGETS: list[tuple[str, str, str, float | None, tuple[str, ...] | None]] = [
    ("none", "dgl-floor", "train_cpu_median_s", 1.0, None),
    ("none", "dgl-floor", "memory_mib", 1.0, ("physics",)),
    ("none-eager", "dgl-floor", "train_cpu_median_s", None, None),
    ("none-compiled", "dgl-floor", "train_cpu_median_s", None, None),
    ("alternating", "none", "train_cpu_median_s", 1.5, ("ppi-batch", "physics")),
    ("simultaneous", "none", "train_cpu_median_s", 1.25, ("ppi-batch", "physics")),
    ("alternating", "none", "memory_mib", 1.2, ("physics",)),
    ("simultaneous", "none", "memory_mib", 1.2, ("physics",)),
]


def targets(results: list[tuple[str, dict[str, Any]]]) -> list[dict[str, Any]]:
    """Every ratio of TARGETS that this run measured: (setting, what, ratio, target, met)."""
    rows = []
    for label, summary in results:
        setting = label.split(",")[0]
        for num, den, measure, target, where in TARGETS:
            if num in summary and den in summary and (where is None or setting in where):
                ratio = summary[num][measure] / summary[den][measure]
                what = f"{num} / {den}, {'CPU time' if measure.startswith('train') else 'peak memory'}"
                rows.append({"setting": label, "what": what, "ratio": ratio, "target": target,
                             "met": None if target is None else ratio <= target})  # fmt: skip
    return rows


def print_targets(rows: list[dict[str, Any]]) -> str:
    lines = ["| setting | ratio | measured | target |", "|---|---|---:|---|"]
    for r in rows:
        target = "stated" if r["target"] is None else f"<= {r['target']:g}: {'met' if r['met'] else 'NOT met'}"
        lines.append(f"| {r['setting']} | {r['what']} | {r['ratio']:.2f} | {target} |")
    text = "\n".join(lines) + "\n"
    print("\n## targets\n" + text)
    return text


def describe_graph(spec: JobSpec) -> str:
    from alignahead.datasets import load_dataset

    d = load_dataset(spec.dataset, seed=spec.training.seed)
    graphs = d.train if d.transductive else d.train + d.val + d.test
    nodes, edges = sum(g.num_nodes() for g in graphs), sum(g.num_edges() for g in graphs)
    return f"{len(graphs)} graph(s), {nodes:,} nodes, {edges:,} edges with self-loops, {d.num_features} features"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("spec", nargs="?", help="a job spec (YAML) to run instead of the settings")
    p.add_argument("--setting", action="append", help=f"NAME:K, repeatable; names: {', '.join(SETTINGS)}")
    p.add_argument("--variants", default=",".join(DEFAULT_VARIANTS), help="comma-separated, from " + ",".join(VARIANTS))
    p.add_argument("--dataset", help="with SPEC: 'cora' (the shared Cora npz) or a path to an .npz")
    p.add_argument("--students", type=int, help="with SPEC: k copies of its first student")
    p.add_argument("--epochs", type=int, help="epochs per run, the first being an untimed warm-up")
    p.add_argument("--repeat", type=int, default=1, help="runs per variant, order alternating")
    p.add_argument("--threads", type=int, default=1, help="torch threads per run (default 1)")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"])
    p.add_argument("--float64", action="store_true", help="train in double precision (a correctness check)")
    p.add_argument("--precision", choices=["fp32", "bf16", "fp16"], help="training.precision of our variants")
    p.add_argument("--compile", choices=["auto", "on", "off"], help="ALIGNAHEAD_COMPILE of our variants")
    p.add_argument("--out", help="write every run's raw figures and the summaries to this JSON file")
    p.add_argument("--markdown", help="write the tables (and the targets) to this Markdown file too")
    args = p.parse_args(argv)
    variants = [v for v in args.variants.split(",") if v]
    if unknown := set(variants) - set(VARIANTS):
        raise SystemExit(f"unknown variant(s) {sorted(unknown)}; choose from {', '.join(VARIANTS)}")
    if _version("dgl") is None and set(variants) & set(DGL_VARIANTS):
        print(f"DGL is not installed: leaving out {', '.join(v for v in variants if v in DGL_VARIANTS)}")
        variants = [v for v in variants if v not in DGL_VARIANTS]
    if args.spec:
        settings = [(Path(args.spec).stem, file_spec(args))]
    else:
        settings = []
        for item in args.setting or DEFAULT_SUITE:
            name, _, k = item.partition(":")
            spec = setting_spec(name, int(k or 2), args.epochs, args.device, args.precision)
            settings.append((f"{name}, k={k or 2}", spec))

    info = machine()
    info["torch_threads"] = args.threads
    dev = info["gpu"] or f"{info['cpu']} ({info['cpu_cores']} cores, {args.threads} torch thread(s) per run)"
    print(f"device: {dev}; torch {info['torch']}, dgl {info['dgl']}, python {info['python']}")
    ok, payload = True, {"machine": info, "settings": []}
    markdown = [f"device: {dev}; torch {info['torch']}, dgl {info['dgl']}, python {info['python']}\n"]
    for label, spec in settings:
        runs: list[dict[str, Any]] = []
        for r in range(args.repeat):
            for variant in variants if r % 2 == 0 else variants[::-1]:
                print(f"{label}: repeat {r + 1}/{args.repeat}: {variant} ...", file=sys.stderr, flush=True)
                res = run_isolated(variant, spec, args.float64, args.threads, args.compile)
                print(f"  {res['total_seconds']:.1f} s", file=sys.stderr, flush=True)
                runs.append(res)
        summary, check = summarise(runs), checks(runs, args.float64, args.precision in (None, "fp32"))
        graph = describe_graph(spec)
        print_setting(label, spec, graph, summary, check)
        markdown.append(markdown_setting(label, graph, summary))
        agree = all(check.get(key, {}).get("agree", True) for key in ("losses", "floor_losses"))
        ok = ok and check["same_init"] and check["same_data"] and agree
        payload["settings"].append({"label": label, "spec": spec.model_dump(), "summary": summary, "checks": check,
                                    "runs": runs})  # fmt: skip
    payload["targets"] = targets([(s["label"], s["summary"]) for s in payload["settings"]])
    markdown.append(print_targets(payload["targets"]))
    if args.out:
        Path(args.out).write_text(json.dumps(payload, indent=2))
        print(f"\nwrote {args.out}")
    if args.markdown:
        Path(args.markdown).write_text("\n".join(markdown))
        print(f"wrote {args.markdown}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
