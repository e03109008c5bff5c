"""Response bodies of the API (the request body of POST /v1/jobs is alignahead's JobSpec itself)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PlainSerializer, StringConstraints, WithJsonSchema

from alignahead.enums import CheckpointKind, JobStatus, Queue
from alignahead.spec import JobSpec
from service.core.models import JobLog, MetricRow, int_column_max

# Bounds of request parameters, checked before they reach the database (out-of-range integers are 422s):
# an integer compared with a column is bounded by that column's width.
MAX_SEQ = int_column_max(MetricRow.id)  # metric seqs (?since=, Last-Event-ID): 64-bit
MAX_LOG_SEQ = int_column_max(JobLog.seq)  # log line seqs: 32-bit
MAX_STUDENT = 1023  # far above any limit, within the 32-bit student columns
MAX_METRIC_ROWS = 10_000  # per metrics page
DEFAULT_METRIC_ROWS = 1000  # a metrics page when no limit is given (the routes and the polling fast path)
MAX_LOG_LINES = 10_000  # per logs page
MAX_COMPARE_JOBS = 20  # jobs per GET /v1/metrics.csv


def _utc_microseconds(when: datetime) -> str:
    return when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


# Every timestamp the API writes has six decimals, so that timestamps compare as strings too (pydantic
# leaves the fraction out when it is zero: "12:00:00Z" sorted after "12:00:00.5Z").
Timestamp = Annotated[
    datetime,
    PlainSerializer(_utc_microseconds, return_type=str, when_used="json"),
    WithJsonSchema({"type": "string", "format": "date-time"}),
]


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
    created_at: Timestamp
    started_at: Timestamp | None
    finished_at: Timestamp | None
    heartbeat_at: Timestamp | None
    error: str | None = Field(description="Why a failed job failed.")
    stop_reason: str | None = Field(
        None,
        description="Why a succeeded job ended before its last epoch (early stopping, `training.patience`), saying "
        "at which epoch; null when it ran every epoch.",
    )
    study_id: str | None = Field(None, description="The study this job belongs to (POST /v1/studies), if any.")
    request_id: str | None = Field(
        None,
        description="The X-Request-ID of the request that submitted it; the workers' log lines for the job carry it.",
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
    created_at: Timestamp


class MetricPage(BaseModel):
    job_id: str
    rows: list[MetricOut]
    next_since: int = Field(description="The `since` of the next poll.")


class LogLineOut(BaseModel):
    seq: int = Field(description="Numbers the job's lines 1, 2, ... over all its attempts; poll with since=<last seq>.")
    created_at: Timestamp = Field(description="When the worker logged it.")
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
    created_at: Timestamp
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
    created_at: Timestamp
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


# --- studies -------------------------------------------------------------------------------------------

SpecPath = Annotated[str, StringConstraints(min_length=1, max_length=200)]


class StudyIn(BaseModel):
    """A base job spec run for every seed and every combination of the axes' values."""

    model_config = ConfigDict(extra="forbid")

    name: str | None = Field(
        None,
        max_length=150,
        description="The study's name (default: the base spec's `name`); its jobs are named after it.",
    )
    spec: dict[str, Any] = Field(description="The base job spec (as POST /v1/jobs takes it).")
    # strict: pydantic would read true as 1
    seeds: (
        Annotated[int, Field(ge=1, le=100_000, strict=True)]
        | Annotated[list[Annotated[int, Field(strict=True)]], Field(min_length=1, max_length=100_000)]
    ) = Field(3, description="A count n (seeds 0..n-1) or a list of seeds; each sets training.seed.")
    axes: dict[SpecPath, list[Any]] = Field(
        default_factory=dict,
        description="Dotted spec paths to lists of values, e.g. {'distillation.strategy': ['none', 'alignahead'], "
        "'distillation.alpha': [0.5, 1, 2]}; `students.0.hidden_size` indexes the students.",
    )


class Comparison(BaseModel):
    n: int = Field(description="Seeds where both this cell and its baseline have a value (pairs).")
    mean_diff: float | None = Field(description="Mean over pairs of (this cell - baseline).")
    ci_low: float | None = Field(description="95% t confidence interval of the mean difference; null below 2 pairs.")
    ci_high: float | None
    p_value: float | None = Field(description="Two-sided p-value of the paired test; null below 2 pairs or when "
                                  "every difference is the same.")  # fmt: skip


class MetricStats(BaseModel):
    n: int = Field(description="Succeeded jobs with a value.")
    mean: float | None
    std: float | None = Field(description="Sample standard deviation (ddof=1); null below 2 values.")
    vs_baseline: Comparison | None = Field(
        description="Against the cell with strategy 'none' and the other axes equal; null when there is none."
    )


class StudyRow(BaseModel):
    cell: dict[str, Any] = Field(description="The axes' values of this cell (seeds aside).")
    student: int = Field(description="Student position in the spec's expanded students.")
    jobs: int
    succeeded: int
    test_at_best: MetricStats
    best_val: MetricStats


class StudySummaryOut(BaseModel):
    id: str
    name: str | None
    created_at: Timestamp
    jobs: int = Field(description="Jobs the study has now (deleted ones aside).")
    counts: dict[JobStatus, int] = Field(description="Jobs per status.")
    done: bool = Field(description="No job is queued or running.")


class StudyOut(StudySummaryOut):
    spec: dict[str, Any] = Field(description="The base spec as submitted.")
    seeds: list[int]
    axes: dict[str, list[Any]] = Field(description="The axes, each value as the validated spec holds it.")
    job_ids: list[str] = Field(description="The jobs, cell by cell in the axes' order, seeds within each.")
    test: str = Field(description="The test behind p_value.")
    confidence: float = Field(description="Level of the confidence intervals.")
    table: list[StudyRow] = Field(description="Per cell and student position, over seeds; only succeeded jobs count.")


class StudyPage(BaseModel):
    studies: list[StudySummaryOut]
    next_cursor: str | None


class HealthOut(BaseModel):
    status: Literal["ok", "unavailable"]
    checks: dict[str, str] = Field(default_factory=dict)
