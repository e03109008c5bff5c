"""A metric row: one student's figures for one epoch. Defined once, torch-free, so that the trainer that
makes rows, the worker and the job core that store them, and the CLI that writes them share one type."""

from __future__ import annotations

from dataclasses import dataclass, fields


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


# the names of the figures (every field but the row's key and its time), and the row's fields in order
VALUES = ("loss", "task_loss", "distill_loss", "train_score", "val_score", "test_score")
FIELDS = tuple(f.name for f in fields(EpochMetrics))
assert set(VALUES) == set(FIELDS) - {"epoch", "student", "seconds"}
