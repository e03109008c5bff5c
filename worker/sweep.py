"""The sweep: take back jobs whose worker is gone, and send what the broker does not have.

kombu's SQL transport hides a delivered message until it is acknowledged and never shows it again if
the worker holding it is SIGKILLed; Redis brings it back only after a long visibility timeout; a Redis
restarted without persistence forgets its queues. So each worker, when it starts and then
periodically: takes back stale running jobs (service.core.jobcore's one rule; a job that lost
max_attempts workers fails instead), sends every stored job that no broker has, and re-sends queued
jobs whose message is older than the grace period. Extra messages are harmless: a claim takes only
queued jobs, so duplicates are dropped.
"""

from __future__ import annotations

import logging
import threading

from service.core import dispatch, jobcore
from service.core.broker import enqueue
from worker.context import WorkerContext

log = logging.getLogger("alignahead.worker")


def sweep(ctx: WorkerContext) -> list[str]:
    """One round; returns the ids of the jobs it took back."""
    settings = ctx.settings
    with ctx.tx() as s:
        taken = jobcore.take_back_stale(s, max_attempts=settings.max_attempts)
    if taken:
        log.warning("took back %d job(s) from lost workers: %s", len(taken), ", ".join(i for i, _ in taken))
    dispatch.send_unsent(ctx.tx, ctx.celery, settings)
    with ctx.tx() as s:
        lost = jobcore.lost_messages(s, settings.queued_grace_seconds)
    for job_id, queue, previous in lost:
        with ctx.tx() as s:
            if not jobcore.mark_sent(s, job_id, previous):
                continue  # another sweep re-sent it first
        try:
            enqueue(ctx.celery, settings, job_id, queue)
            log.warning("job %s waited past the queued grace; re-sent", job_id)
        except Exception:
            log.exception("could not re-send job %s", job_id)
    return [i for i, _ in taken]


class Sweeper:
    """Sweeps once now, then every sweep_interval_seconds in a daemon thread (0: only once)."""

    def __init__(self, ctx: WorkerContext) -> None:
        self.ctx = ctx
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="sweep", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _loop(self) -> None:
        interval = self.ctx.settings.sweep_interval_seconds
        while True:
            try:
                sweep(self.ctx)
            except Exception:  # the database may be briefly away; the next round retries
                log.exception("sweep failed")
            if interval <= 0 or self._stop.wait(interval):
                return
