"""A job's log, captured while a worker runs it: kept in the database (GET /v1/jobs/{id}/logs) and,
tagged with the job's id, in the worker's own log.

What is kept: records of the `alignahead` logger hierarchy (the library's `alignahead.trainer`,
`alignahead.datasets`, ... and the worker's `alignahead.worker`) at INFO and above, logged by the thread
that runs the job or by its heartbeat thread; exceptions with their traceback. Lines are buffered and
written with the job's own writes (each epoch, each heartbeat, before it ends), fenced by its claim
like every write of its worker. At most `job_log_max_lines` per job: the first half and the latest
lines; the middle is dropped (see service.core.jobcore.append_logs), and so is a line's middle past
`job_log_max_chars`.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

from service.core import jobcore
from service.core.jobcore import Claim
from service.core.logs import LogContext
from worker.context import WorkerContext

log = logging.getLogger("alignahead.worker")
CAPTURED = "alignahead"  # the logger hierarchy whose records a job keeps

# thread id -> the job it runs; job id -> the same, for its heartbeat thread: the job's fields in the
# worker's own log lines (service.core.logs.FIELDS)
_jobs_by_thread: dict[int, LogContext] = {}
_jobs_by_id: dict[str, LogContext] = {}
HEARTBEAT_PREFIX = "heartbeat-"  # worker.runner.Heartbeat names its thread heartbeat-<job id>


def clip(text: str, limit: int) -> str:
    """At most `limit` characters: the start and the end, the cut said in the middle."""
    if len(text) <= limit:
        return text
    note = f"\n[... {len(text) - limit} characters cut ...]\n"
    keep = max(0, limit - len(note))
    return text[: keep // 2] + note + text[len(text) - (keep - keep // 2) :]


def context_of(record: logging.LogRecord) -> LogContext | None:
    """The job that the record's thread runs (or beats for), if any."""
    ctx = _jobs_by_thread.get(record.thread or 0)
    if ctx is None and record.threadName and record.threadName.startswith(HEARTBEAT_PREFIX):
        job_id = record.threadName[len(HEARTBEAT_PREFIX) :]
        ctx = _jobs_by_id.get(job_id) or LogContext(job_id=job_id)
    return ctx


def job_of(record: logging.LogRecord) -> str | None:
    ctx = context_of(record)
    return None if ctx is None else ctx.job_id


class JobIdFilter(logging.Filter):
    """On the worker's handlers: a line logged while a job runs carries the job's fields (job_id,
    tenant, attempt, request_id) and, for people (`prefix`), says which job in its text, once."""

    def __init__(self, prefix: bool) -> None:
        super().__init__()
        self.prefix = prefix

    def filter(self, record: logging.LogRecord) -> bool:
        ctx = context_of(record)
        if ctx is None or getattr(record, "job_id", None) is not None:
            return True  # no job, or stamped by an earlier handler
        ctx.stamp(record)
        if not self.prefix:
            return True
        try:
            mentioned = ctx.job_id in record.getMessage()
        except Exception:  # a malformed record: logging reports it itself
            return True
        if not mentioned:  # the prefix holds no '%': formatting with the record's args is unchanged
            record.msg = f"[job {ctx.job_id}] {record.msg}"
        return True


TEXT_FILTER = JobIdFilter(prefix=True)
JSON_FILTER = JobIdFilter(prefix=False)  # the fields are the JSON line's own keys


def tag_worker_log(log_format: str = "text") -> None:
    """Add the job filter to the root logger's handlers (Celery's), once each."""
    job_filter = JSON_FILTER if log_format == "json" else TEXT_FILTER
    for handler in logging.getLogger().handlers:
        if job_filter not in handler.filters:
            handler.addFilter(job_filter)


class JobLogHandler(logging.Handler):
    """Buffers one job's records as rows of job_logs; `flush()` writes them (any thread may call it)."""

    def __init__(self, ctx: WorkerContext, claim: Claim, last_seq: int) -> None:
        super().__init__(logging.INFO)
        self.ctx, self.claim = ctx, claim
        self.seq = last_seq
        self.pending: list[dict[str, Any]] = []
        self.max_lines = ctx.settings.job_log_max_lines
        self.max_chars = ctx.settings.job_log_max_chars
        self._writing = threading.Lock()
        self._traceback = logging.Formatter()

    def emit(self, record: logging.LogRecord) -> None:  # called under self.lock
        if job_of(record) != self.claim.job_id:
            return  # another thread's business (the sweep, another job)
        try:
            message = record.getMessage()
        except Exception:
            message = str(record.msg)
        if record.exc_info:
            message = f"{message}\n{self._traceback.formatException(record.exc_info)}"
        self.seq += 1
        self.pending.append({
            "seq": self.seq,
            "at": datetime.fromtimestamp(record.created, UTC),
            "level": record.levelname[:10],
            "logger": record.name[:100],
            "message": clip(message, self.max_chars),
        })  # fmt: skip
        if len(self.pending) > self.max_lines:
            # a flood between writes: drop what the database would drop (the first line past the head)
            head = self.max_lines // 2
            drop = next(i for i, line in enumerate(self.pending) if line["seq"] > head)
            del self.pending[drop]

    def flush(self) -> None:
        """Write the buffered lines; on a database error they wait for the next flush."""
        with self._writing:
            with self.lock:  # type: ignore[union-attr]  # logging.Handler creates it
                lines, self.pending = self.pending, []
            if not lines:
                return
            try:
                with self.ctx.tx() as s:
                    jobcore.append_logs(s, self.claim, lines, max_lines=self.max_lines)
            except Exception:
                with self.lock:  # type: ignore[union-attr]
                    self.pending[:0] = lines
                log.warning("could not store log lines of job %s; retrying later", self.claim.job_id, exc_info=True)


@contextmanager
def capture(ctx: WorkerContext, claim: Claim, last_seq: int) -> Iterator[JobLogHandler]:
    """Capture the job's log for as long as this block runs it (in this thread), numbering lines on
    from `last_seq` (read with the claim: earlier attempts' lines); written at the end."""
    handler = JobLogHandler(ctx, claim, last_seq)
    logger = logging.getLogger(CAPTURED)
    level = logger.level
    if logger.getEffectiveLevel() > logging.INFO:
        logger.setLevel(logging.INFO)  # the job's INFO lines are kept even where the worker logs less
    tag_worker_log(ctx.settings.log_format)
    me = threading.get_ident()
    job = LogContext(request_id=claim.request_id, tenant=claim.tenant_id, job_id=claim.job_id, attempt=claim.attempts)
    _jobs_by_thread[me] = _jobs_by_id[claim.job_id] = job
    logger.addHandler(handler)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)
        _jobs_by_thread.pop(me, None)
        _jobs_by_id.pop(claim.job_id, None)
        logger.setLevel(level)
        handler.flush()
