"""The one task: run a job by id. The message carries only the id; the database holds the rest."""

from __future__ import annotations

import logging

from service.core import jobcore
from service.core.broker import RUN_JOB, enqueue
from worker import monitoring, store
from worker.app import app
from worker.context import get_worker_context, shutting_down
from worker.joblog import capture
from worker.runner import JobRunner

log = logging.getLogger("alignahead.worker")


@app.task(name=RUN_JOB)
def run_job(job_id: str) -> str:
    """Claim the job and run it; a delivery that cannot claim it (a duplicate) is dropped."""
    outcome = _run(job_id)
    monitoring.DELIVERIES.labels(outcome).inc()
    return outcome


def _run(job_id: str) -> str:
    ctx = get_worker_context(app)
    if shutting_down.is_set():  # a warm shutdown still drains messages; leave this one to the next worker
        with ctx.tx() as s:
            queue = store.queue_of(s, job_id)
        if queue is not None:
            enqueue(ctx.celery, ctx.settings, job_id, queue)
        return "deferred"
    with ctx.tx() as s:
        claim = jobcore.claim(s, job_id, worker=ctx.name, lease=ctx.lease)
        last_log_seq = store.last_log_seq(s, job_id) if claim is not None else 0
    if claim is None:
        log.info("job %s: not claimable (finished, cancelled, unknown or running elsewhere); dropped", job_id)
        return "dropped"
    with monitoring.JOBS_RUNNING.track_inprogress(), capture(ctx, claim, last_log_seq) as logs:
        # from here on the job's log lines are kept with it
        if claim.attempts > 1:
            log.warning("job %s: attempt %d (of at most %d), resuming", job_id, claim.attempts,
                        ctx.settings.max_attempts)  # fmt: skip
        else:
            log.info("job %s: attempt 1 on worker %s", job_id, ctx.name)
        return JobRunner(ctx, claim, logs).run()
