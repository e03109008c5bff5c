"""The names of a job's status, its queue and a checkpoint's kind: defined once, used by the service, the worker,
the client, the CLI and the studies code (torch-free, so the client imports it cheaply).

StrEnum members compare equal to their values, so rows, JSON bodies and the trainer's plain strings
("best", "final") all meet them without conversion.
"""

from __future__ import annotations

from enum import StrEnum


class JobStatus(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


FINISHED = (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED)
ACTIVE = (JobStatus.QUEUED, JobStatus.RUNNING)


class Queue(StrEnum):
    """Broker queues, without a deployment's queue_prefix: `gpu` for device 'cuda', else `cpu`."""

    CPU = "cpu"
    GPU = "gpu"


class CheckpointKind(StrEnum):
    BEST = "best"  # replaced whenever a student's validation score improves
    FINAL = "final"  # written once, after the last epoch
