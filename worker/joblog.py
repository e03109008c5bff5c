"""A job's log, captured while a worker runs it: kept in the database (GET /v1/jobs/{id}/logs) and,
tagged with the job's id, in the worker's own log.

What is kept: records of the `alignahead` logger hierarchy (the library's `alignahead.trainer`,
`alignahead.datasets`, ... and the worker's `alignahead.worker`) at INFO and above, logged by the thread
that runs the job or by its heartbeat thread; exceptions with their traceback. Lines are buffered and
written with the job's own writes (each epoch, each heartbeat, before it ends), fenced by its claim
like every write of its worker. At most `job_log_max_lines` per job: the first half and the latest
lines; the middle is dropped (see service.jobcore.append_logs), and so is a line's middle past
`job_log_max_chars`.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

from service import jobcore
from service.jobcore import Claim
from worker.context import WorkerContext

log = logging.getLogger("alignahead.worker")
CAPTURED = "alignahead"  # the logger hierarchy whose records a job keeps

# thread id -> the job it runs, for the job id in the worker's own log lines
_jobs_by_thread: dict[int, str] = {}
HEARTBEAT_PREFIX = "heartbeat-"  # worker.runner.Heartbeat names its thread heartbeat-<job id>


def clip(text: str, limit: int) -> str:
    """At most `limit` characters: the start and the end, the cut said in the middle."""
    if len(text) <= limit:
        return text
    note = f"\n[... {len(text) - limit} characters cut ...]\n"
    keep = max(0, limit - len(note))
    return text[: keep // 2] + note + text[len(text) - (keep - keep // 2) :]


def job_of(record: logging.LogRecord) -> str | None:
    job_id = _jobs_by_thread.get(record.thread or 0)
    if job_id is None and record.threadName and record.threadName.startswith(HEARTBEAT_PREFIX):
        job_id = record.threadName[len(HEARTBEAT_PREFIX) :]
    return job_id


class JobIdFilter(logging.Filter):
    """On the worker's handlers: a line logged while a job runs says which job, once."""

    def filter(self, record: logging.LogRecord) -> bool:
        job_id = job_of(record)
        if job_id is not None and getattr(record, "job_id", None) is None:
            record.job_id = job_id
            try:
                mentioned = job_id in record.getMessage()
            except Exception:  # a malformed record: logging reports it itself
                return True
            if not mentioned:  # the prefix holds no '%': formatting with the record's args is unchanged
                record.msg = f"[job {job_id}] {record.msg}"
        return True


_FILTER = JobIdFilter()


def tag_worker_log() -> None:
    """Add the job-id filter to the root logger's handlers (Celery's), once each."""
    for handler in logging.getLogger().handlers:
        if _FILTER not in handler.filters:
            handler.addFilter(_FILTER)


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
    tag_worker_log()
    me = threading.get_ident()
    _jobs_by_thread[me] = claim.job_id
    logger.addHandler(handler)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)
        _jobs_by_thread.pop(me, None)
        logger.setLevel(level)
        handler.flush()
