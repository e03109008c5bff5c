"""Response bodies of the API (the request body of POST /v1/jobs is alignahead's JobSpec itself)."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from alignahead.spec import JobSpec
from service.enums import CheckpointKind, JobStatus, Queue

# bounds of request parameters, checked before they reach the database (out-of-range integers are 422s)
MAX_SEQ = 2**63 - 1  # metric seqs are 64-bit
MAX_STUDENT = 1023  # far above any limit
MAX_METRIC_ROWS = 10_000  # per metrics page
MAX_LOG_LINES = 10_000  # per logs page


class _Out(BaseModel):
    model_config = ConfigDict(from_attributes=True)


class ErrorItem(BaseModel):
    loc: list[str | int] = Field(description="Where: e.g. ['body', 'training', 'epochs'] or ['query', 'since'].")
    msg: str = Field(description="What is wrong there.")
    type: str = Field(description="A stable machine-readable kind, e.g. 'less_than_equal' or 'extra_forbidden'.")


class ErrorOut(BaseModel):
    """The shape of every error answer."""

    detail: str = Field(description="One readable sentence: what went wrong and how to fix it.")
    errors: list[ErrorItem] = Field(description="The fields at fault (validation errors); empty otherwise.")


class Progress(BaseModel):
    epoch: int = Field(description="Epochs finished so far.")
    total: int = Field(description="Epochs the job trains for.")


class StudentOut(BaseModel):
    student: int
    arch: str
    best_val: float | None = Field(None, description="Best validation score so far.")
    best_epoch: int | None = Field(None, description="The epoch of best_val.")
    test_at_best: float | None = Field(None, description="Test score at best_epoch.")


class JobSummaryOut(BaseModel):
    id: str
    name: str | None = Field(description="The spec's `name`.")
    tags: list[str] = Field(description="The spec's `tags`.")
    status: JobStatus
    queue: Queue
    progress: Progress
    attempts: int = Field(
        description="Times a worker started (or resumed) the job; >1 after a worker died or handed it back."
    )
    worker_losses: int = Field(
        description="Times the job was taken back from a worker that died or stalled; at max_attempts it fails."
    )
    cancel_requested: bool
    worker: str | None = Field(description="host:pid of the worker that ran it last.")
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    heartbeat_at: datetime | None
    error: str | None = Field(description="Why a failed job failed.")
    stop_reason: str | None = Field(
        None,
        description="Why a succeeded job ended before its last epoch (early stopping, `training.patience`), saying "
        "at which epoch; null when it ran every epoch.",
    )


class JobOut(JobSummaryOut):
    students: list[StudentOut]
    spec: JobSpec


class JobPage(BaseModel):
    jobs: list[JobSummaryOut]
    next_cursor: str | None = Field(description="Pass as `cursor` for the next page; null on the last.")


class MetricOut(_Out):
    seq: int = Field(description="Increases with every stored row; poll with since=<last seq>.")
    epoch: int
    student: int
    loss: float
    task_loss: float
    distill_loss: float
    train_score: float | None
    val_score: float | None
    test_score: float | None
    seconds: float
    created_at: datetime


class MetricPage(BaseModel):
    job_id: str
    rows: list[MetricOut]
    next_since: int = Field(description="The `since` of the next poll.")


class LogLineOut(BaseModel):
    seq: int = Field(description="Numbers the job's lines 1, 2, ... over all its attempts; poll with since=<last seq>.")
    created_at: datetime = Field(description="When the worker logged it.")
    level: str = Field(description="DEBUG, INFO, WARNING, ERROR or CRITICAL.")
    logger: str = Field(description="Where it came from, e.g. 'alignahead.trainer' or 'alignahead.worker'.")
    message: str = Field(description="The line; a failure's traceback follows its message.")


class LogPage(BaseModel):
    job_id: str
    lines: list[LogLineOut] = Field(description="Lines with seq > since, oldest first.")
    next_since: int = Field(description="The `since` of the next poll.")
    omitted: int = Field(
        description="Lines dropped so far by the cap (job_log_max_lines): the first half and the latest lines "
        "are kept, so they are missing from the middle (a gap in seq)."
    )


class CheckpointOut(_Out):
    kind: CheckpointKind
    epoch: int
    score: float | None = Field(description="Validation score at that epoch.")
    size: int
    sha256: str
    created_at: datetime
    url: str


class StudentCheckpoints(BaseModel):
    student: int
    best: CheckpointOut | None
    final: CheckpointOut | None


class CheckpointList(BaseModel):
    job_id: str
    students: list[StudentCheckpoints]


class DatasetSummary(BaseModel):
    num_nodes: int
    num_edges: int
    num_features: int
    num_classes: int
    multilabel: bool
    num_graphs: int
    has_split: bool


class UploadOut(_Out):
    id: str
    filename: str | None
    size: int
    sha256: str
    created_at: datetime
    summary: DatasetSummary
    dataset_spec: dict[str, Any] = Field(description="Use as the job spec's `dataset` section.")


class BuiltinDataset(BaseModel):
    name: str
    kind: str
    description: str


class DatasetList(BaseModel):
    uploads: list[UploadOut]
    next_cursor: str | None
    builtin: list[BuiltinDataset]


class HealthOut(BaseModel):
    status: Literal["ok", "unavailable"]
    checks: dict[str, str] = Field(default_factory=dict)
