"""The service's one configuration object, read from ALIGNAHEAD_* environment variables.

The API factory and the Celery app are both built from a Settings instance, so a test (or a second
deployment in the same process) passes its own instead of patching module globals.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from alignahead.enums import Queue

GiB = 2**30


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="ALIGNAHEAD_", env_file=".env", extra="ignore")

    # --- storage and broker ---------------------------------------------------------------------
    database_url: str = Field(
        "sqlite:///./var/alignahead.db",
        description="SQLAlchemy URL of the job database (SQLite file or postgresql+psycopg://...).",
    )
    broker_url: str = Field(
        "sqla+sqlite:///./var/broker.db",
        description="Celery broker: 'sqla+sqlite:///...' (embedded) or 'redis://host:6379/0'.",
    )
    queue_prefix: str = Field(
        "",
        description="Prepended to the queue names 'cpu' and 'gpu' (and to Redis keys), so several "
        "deployments or test runs can share one broker.",
    )
    # --- API --------------------------------------------------------------------------------------
    api_host: str = Field("127.0.0.1", description="Where `python -m service.run_local` serves the API.")
    api_port: int = Field(8000, ge=1, le=65535, description="Its port.")
    dispatch_interval_seconds: float = Field(
        1.0,
        gt=0,
        description="How often the API retries sending stored jobs that the broker did not take (it was "
        "down): they leave within this long of its return.",
    )
    broker_timeout_seconds: float = Field(
        2.0, gt=0, description="Longest wait for the broker when sending a job; then the job waits for a retry."
    )

    # --- keys and tenants -------------------------------------------------------------------------
    auth_disabled: bool = Field(
        False,
        description="Serve every request without a key, as the tenant 'local'. Only for a single user on "
        "a trusted machine; never the default.",
    )
    auth_secret: SecretStr | None = Field(
        None,
        description="Server secret under which API keys are hashed (HMAC-SHA256). Unset: read from "
        "auth_secret_file, which is created on first use only for a SQLite database; every API process "
        "and alignahead-admin must share it. Changing it invalidates every key.",
    )
    auth_secret_file: Path = Field(Path("./var/auth-secret"), description="Where the secret is kept if unset.")
    local_key_file: Path = Field(
        Path("./var/local-api-key"),
        description="`make run` (service.run_local) creates a key for tenant 'local' on first start and keeps it here.",
    )
    poll_cache_seconds: float = Field(
        0.25,
        ge=0,
        description="How long an API process answers a poll (GET /v1/jobs/{id}, its metrics) from memory; what "
        "workers write shows within this long, the process's own cancels and deletes at once. 0: always read.",
    )
    auth_cache_seconds: float = Field(
        10.0,
        ge=0,
        description="How long an API process trusts a verified key without asking the database again; a "
        "revoked key stops working, and its open event streams end, within this long.",
    )
    events_poll_seconds: float = Field(
        1.0,
        gt=0,
        le=60,
        description="How often an API process reads a job that event streams (GET /v1/jobs/{id}/events) watch, "
        "its new metric rows too (once for all of the job's streams): what a worker writes reaches listeners "
        "within this long.",
    )
    events_ping_seconds: float = Field(
        15.0,
        gt=0,
        le=300,
        description="An event stream with nothing to say sends a keep-alive comment this often, so proxies and "
        "clients (which reopen a stream quiet for 90 s) keep it.",
    )
    cors_origins: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Browser origins allowed to call the API (comma-separated); empty: no cross-origin "
        "access, and state-changing requests from other origins are refused.",
    )

    # --- operations: metrics and logs ---------------------------------------------------------------
    metrics_token: SecretStr | None = Field(
        None,
        description="Serve Prometheus metrics at GET /metrics to requests with 'Authorization: Bearer <this token>'. "
        "Unset: /metrics is off (404). The figures span every tenant, so tenants' API keys do not open it.",
    )
    metrics_dir: Path | None = Field(
        None,
        description="Prometheus multiprocess mode: a folder where every API process of this deployment (uvicorn "
        "--workers N) writes its request counters, so that /metrics, answered by any one process, sums them all. "
        "Empty it before the processes start. Unset: each process counts alone (right for one process).",
    )
    metrics_cache_seconds: float = Field(
        5.0,
        ge=0,
        description="How long /metrics reuses its reading of the job table (jobs by status and queue, the oldest "
        "queued job, attempts, lost workers) before asking the database again. 0: read at every scrape.",
    )
    worker_metrics_port: int | None = Field(
        None,
        ge=1,
        le=65535,
        description="A worker serves its own Prometheus metrics (epochs, epoch seconds, jobs running, its device) "
        "over HTTP on this port; give each worker process its own. Unset: off.",
    )
    worker_metrics_host: str = Field(
        "127.0.0.1", description="The address the worker's metrics port listens on ('0.0.0.0': every interface)."
    )
    log_format: Literal["text", "json"] = Field(
        "text",
        description="'json': the API and the workers write their logs as JSON lines, with job_id, tenant, attempt "
        "and request_id where known; 'text': plain lines for people.",
    )

    # --- limits (each refusal names its setting) --------------------------------------------------
    max_upload_bytes: int = Field(256 * 2**20, ge=1, description="Largest accepted dataset upload (413).")
    max_unpacked_bytes: int = Field(
        1 * GiB,
        ge=1,
        description="Largest uncompressed size of an npz (and of its features as a dense float32 matrix), "
        "in the API's upload check and in the worker alike.",
    )
    max_json_bytes: int = Field(1 * 2**20, ge=1024, description="Largest JSON request body (413).")
    max_json_depth: int = Field(32, ge=4, le=1000, description="Deepest nesting of a JSON request body (422).")
    max_nodes: int = Field(2_000_000, ge=1, description="Nodes of a synthetic or uploaded dataset, all graphs.")
    max_edges: int = Field(50_000_000, ge=1, description="Directed edges (self-loops included), all graphs.")
    max_features: int = Field(100_000, ge=1, description="Input features per node.")
    max_graphs: int = Field(1000, ge=1, description="Graphs in a multi-graph dataset.")
    max_students: int = Field(8, ge=1, description="Students per job.")
    max_hidden_layers: int = Field(8, ge=1, description="Hidden layers per student.")
    max_width: int = Field(4096, ge=1, description="hidden_size x heads of a student's hidden layer.")
    max_epochs: int = Field(10_000, ge=1, description="Epochs per job.")
    worker_memory_bytes: int = Field(
        8 * GiB,
        ge=1,
        description="Memory a worker has for one job; a job whose estimated peak is larger is refused.",
    )
    worker_devices: int = Field(
        1,
        ge=1,
        le=16,
        description="Devices a worker offers one job (CPU slots, or GPUs on a gpu-queue worker): the ranks of a job "
        "with training.parallel 'students' (one per student up to this many); a spec asking for more is refused.",
    )
    max_active_jobs: int = Field(100, ge=1, description="Queued + running jobs per tenant (429).")
    max_submissions_per_minute: float = Field(
        60, gt=0, description="Job submissions per tenant and minute, a token bucket (429 with Retry-After)."
    )
    max_job_seconds: float = Field(
        2 * 24 * 3600.0,
        gt=0,
        description="Wall-clock limit of a job from its first start; past it the job ends failed.",
    )
    max_study_jobs: int = Field(
        200, ge=1, description="Jobs per study (seeds x every axis's values); a larger study is refused (422)."
    )
    max_attempts: int = Field(3, ge=1, description="A job whose worker died (or stalled) this many times ends failed.")

    # --- workers ----------------------------------------------------------------------------------
    job_log_max_lines: int = Field(
        1000,
        ge=2,
        le=1_000_000,
        description="Log lines kept per job (GET /v1/jobs/{id}/logs). Past it the first half and the latest "
        "lines are kept and the middle is dropped: how the job started and how it is ending stay readable.",
    )
    job_log_max_chars: int = Field(
        8000,
        ge=100,
        le=1_000_000,
        description="Longest kept log line (a traceback is one line); longer ones keep their start and end.",
    )
    heartbeat_seconds: float = Field(10.0, gt=0, description="How often a running job's worker says it lives.")
    stale_after_seconds: float = Field(
        60.0, gt=0, description="A running job whose heartbeat is older than this is taken back (its lease)."
    )
    stall_after_seconds: float = Field(
        3600.0,
        gt=0,
        description="A running job whose epoch has not advanced for this long is taken back although its "
        "heartbeat goes on (a hung step); make it longer than an epoch, and than loading the dataset.",
    )
    queued_grace_seconds: float = Field(
        300.0, ge=0, description="A queued job older than this is re-enqueued by the orphan sweep."
    )
    sweep_interval_seconds: float = Field(
        60.0, ge=0, description="Periodic orphan sweep inside each worker; 0 sweeps only at start."
    )
    state_every_epochs: int = Field(
        5, ge=1, description="Save the full training state (for resume after a crash) every N epochs..."
    )
    state_every_seconds: float = Field(
        30.0,
        ge=0,
        description="...and no more often than this: a crash redoes at most about this much training, and "
        "saving stays a small share of the job's time however short its epochs.",
    )
    redis_visibility_timeout: int = Field(
        7 * 24 * 3600,
        ge=60,
        description="Redis broker: seconds before an unacknowledged message is redelivered; longer than any job.",
    )

    @model_validator(mode="after")
    def _check_timeouts(self) -> Settings:
        if self.stale_after_seconds < 2 * self.heartbeat_seconds:
            raise ValueError(
                f"stale_after_seconds ({self.stale_after_seconds:g}) must be at least twice "
                f"heartbeat_seconds ({self.heartbeat_seconds:g}), or live jobs would look orphaned"
            )
        if self.stall_after_seconds < self.stale_after_seconds:
            raise ValueError(
                f"stall_after_seconds ({self.stall_after_seconds:g}) must be at least stale_after_seconds "
                f"({self.stale_after_seconds:g})"
            )
        return self

    @field_validator("cors_origins", mode="before")
    @classmethod
    def _split_origins(cls, value: object) -> object:
        if isinstance(value, str):  # ALIGNAHEAD_CORS_ORIGINS=https://a.example,https://b.example
            return [o.strip().rstrip("/") for o in value.split(",") if o.strip()]
        return value

    def queue_name(self, queue: Queue | str) -> str:
        """The broker queue for 'cpu' or 'gpu' jobs."""
        return f"{self.queue_prefix}{Queue(queue)}"
