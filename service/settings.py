"""The service's one configuration object, read from ALIGNAHEAD_* environment variables.

The API factory and the Celery app are both built from a Settings instance, so a test (or a second
deployment in the same process) passes its own instead of patching module globals.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

QUEUES = ("cpu", "gpu")


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
    data_dir: Path | None = Field(
        None,
        description="Where workers look for (and download) built-in datasets; unset: the library's default "
        "(~/.cache/alignahead/datasets).",
    )

    # --- API --------------------------------------------------------------------------------------
    max_upload_bytes: int = Field(256 * 2**20, ge=1, description="Largest accepted dataset upload.")
    api_host: str = Field("127.0.0.1", description="Where `python -m service.run_local` serves the API.")
    api_port: int = Field(8000, ge=1, le=65535, description="Its port.")

    # --- workers ----------------------------------------------------------------------------------
    heartbeat_seconds: float = Field(10.0, gt=0, description="How often a running job's worker says it lives.")
    stale_after_seconds: float = Field(
        60.0, gt=0, description="A running job whose heartbeat is older than this is an orphan."
    )
    queued_grace_seconds: float = Field(
        300.0, ge=0, description="A queued job older than this is re-enqueued by the orphan sweep."
    )
    sweep_interval_seconds: float = Field(
        60.0, ge=0, description="Periodic orphan sweep inside each worker; 0 sweeps only at start."
    )
    cancel_poll_seconds: float = Field(0.5, gt=0, description="Least time between two cancellation checks.")
    state_every_epochs: int = Field(
        5, ge=1, description="Save the full training state (for resume after a crash) every N epochs."
    )
    torch_threads: int | None = Field(
        None,
        ge=1,
        description="CPU threads per worker process for torch; None: torch's default (all cores). Set it "
        "when several workers share a machine: oversubscribed cores slow training many times over.",
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
        return self

    def queue_name(self, kind: str) -> str:
        """The broker queue for 'cpu' or 'gpu' jobs."""
        return f"{self.queue_prefix}{kind}"
