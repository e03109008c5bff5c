"""The orphan sweep: re-send jobs whose broker message was probably lost.

kombu's SQL transport hides a delivered message until it is acknowledged and never shows it again if
the worker holding it is SIGKILLed; Redis brings it back only after a long visibility timeout. So each
worker, when it starts and then periodically, re-enqueues running jobs with a stale heartbeat and
queued jobs past a grace period. Extra messages are harmless: the atomic claim drops duplicates.
"""

from __future__ import annotations

import logging
import threading

from service.broker import enqueue
from worker import store
from worker.context import WorkerContext

log = logging.getLogger("alignahead.worker")


def sweep(ctx: WorkerContext) -> list[str]:
    """Re-enqueue orphaned jobs; returns their ids."""
    s_ = ctx.settings
    with ctx.tx() as s:
        found = store.orphans(
            s, stale_after_seconds=s_.stale_after_seconds, queued_grace_seconds=s_.queued_grace_seconds
        )
    resent = []
    for job_id, queue, previous in found:
        with ctx.tx() as s:
            if not store.mark_resent(s, job_id, previous):
                continue  # another worker's sweep got there first
        try:
            enqueue(ctx.celery, s_, job_id, queue)
            resent.append(job_id)
        except Exception:
            log.exception("orphan sweep could not re-enqueue job %s", job_id)
    if resent:
        log.warning("orphan sweep re-enqueued %d job(s): %s", len(resent), ", ".join(resent))
    return resent


class Sweeper:
    """Sweeps once now, then every sweep_interval_seconds in a daemon thread (0: only once)."""

    def __init__(self, ctx: WorkerContext) -> None:
        self.ctx = ctx
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="orphan-sweep", daemon=True)

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
                log.exception("orphan sweep failed")
            if interval <= 0 or self._stop.wait(interval):
                return
