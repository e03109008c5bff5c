"""Quick start: submit the synthetic example to a running service, follow it, plot its curves, and run
its best student.

    make run                                         # terminal 1: the API on :8000 and a worker
    export ALIGNAHEAD_API_KEY=$(cat var/local-api-key)  # terminal 2: the key `make run` made
    .venv/bin/python examples/quickstart.py          # (ALIGNAHEAD_URL for a service elsewhere, or
                                                     # pass --url / --api-key)

Writes runs/quickstart/quickstart.png (runs/ is git-ignored): task loss, distillation loss, validation
and test score per student and epoch.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no window
import matplotlib.pyplot as plt  # noqa: E402

import alignahead  # noqa: E402
from alignahead.client import Client, Job, MetricRows  # noqa: E402

HERE = Path(__file__).resolve().parent
CURVES = [("task_loss", "task loss"), ("distill_loss", "distillation loss"), ("val_score", "validation score"),
          ("test_score", "test score")]  # fmt: skip


def plot(job: Job, rows: MetricRows, path: Path) -> None:
    fig, axes = plt.subplots(2, 2, figsize=(11, 7), sharex=True)
    for (key, title), ax in zip(CURVES, axes.flat, strict=True):
        for s in job.students:
            mine = [r for r in rows.for_student(s["student"]) if r[key] is not None]
            ax.plot([r["epoch"] for r in mine], [r[key] for r in mine], label=f"student {s['student']} ({s['arch']})")
        ax.set_title(title)
        ax.grid(alpha=0.3)
    for ax in axes[1]:
        ax.set_xlabel("epoch")
    axes[0][0].legend()
    fig.suptitle(f"job {job.id} ({job.name or 'unnamed'})")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--spec", default=HERE / "synthetic-mixed.yaml", type=Path, help="job spec to submit")
    parser.add_argument(
        "--out",
        default=Path("runs/quickstart/quickstart.png"),
        type=Path,
        help="where to save the curves (default runs/quickstart/quickstart.png)",
    )
    parser.add_argument("--url", help="the service (default $ALIGNAHEAD_URL, else http://127.0.0.1:8000)")
    parser.add_argument("--api-key", help="API key (default $ALIGNAHEAD_API_KEY)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = parser.parse_args()

    with Client(args.url, args.api_key) as client:
        job = client.submit(args.spec)
        print(f"submitted job {job.id} to {client.url}")
        job.wait(progress=not args.no_progress)  # raises JobFailed with the reason if it fails

        rows = job.metrics()
        args.out.parent.mkdir(parents=True, exist_ok=True)
        plot(job, rows, args.out)
        print(f"{len(rows)} metric rows; curves saved to {args.out}")

        best = max(job.students, key=lambda s: s["best_val"])
        student = job.load_student(best["student"], "best")  # downloaded, sha256-verified, eval mode
        graph = alignahead.load_graph(student, split="test")  # rebuilt from the checkpoint's dataset and seed
        logits = student.predict(graph)  # [num_nodes, num_classes]
        mask = graph.ndata["test_mask"]
        # right over all, in float64 as the service counts it (a float32 mean can print 0.1 off on a .x5)
        accuracy = (logits[mask].argmax(1) == graph.ndata["label"][mask]).sum().item() / int(mask.sum())
        print(
            f"best student: {best['student']} ({best['arch']}), validation {100 * best['best_val']:.1f} % at epoch "
            f"{best['best_epoch']}; its test accuracy: {100 * accuracy:.1f} % (the service reported "
            f"{100 * best['test_at_best']:.1f} %)"
        )


if __name__ == "__main__":
    main()
