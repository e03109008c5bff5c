"""Getting stored jobs to the broker: now if it answers, within seconds of its return if not.

A job is stored first (the database is the truth) and sent second. The sender reserves a send by
stamping `enqueued_at` through jobcore (a conditional UPDATE, so of several API processes and worker sweeps
only one sends) and clears the stamp again if the broker refuses, leaving the job for the next round. The API
runs a Dispatcher thread that retries every dispatch_interval_seconds; workers' sweeps call the same
function.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from contextlib import AbstractContextManager

from celery import Celery
from sqlalchemy.orm import Session

from service.core import jobcore
from service.core.broker import enqueue
from service.core.settings import Settings

log = logging.getLogger("alignahead.dispatch")
Tx = Callable[[], AbstractContextManager[Session]]


def send(tx: Tx, celery: Celery, settings: Settings, job_id: str, queue: str) -> bool:
    """Send one job that is stored but unsent; False if the broker did not take it (it stays unsent)."""
    with tx() as s:
        if not jobcore.mark_sent(s, job_id):
            return True  # someone else is sending it
    try:
        enqueue(celery, settings, job_id, queue)
        return True
    except Exception as e:
        log.warning("broker did not take job %s (%s: %s); it is stored and will be sent when the broker answers",
                    job_id, type(e).__name__, e)  # fmt: skip
        with tx() as s:
            jobcore.mark_unsent(s, job_id)
        return False


def send_unsent(tx: Tx, celery: Celery, settings: Settings) -> int:
    """Send every stored, unsent job, oldest first; stops at the first refusal. Returns how many left."""
    with tx() as s:
        pending = jobcore.unsent(s)
    sent = 0
    for job_id, queue in pending:
        if not send(tx, celery, settings, job_id, queue):
            break
        sent += 1
    if sent:
        log.info("sent %d stored job(s) to the broker", sent)
    return sent


class Dispatcher:
    """Runs send_unsent every dispatch_interval_seconds in a daemon thread."""

    def __init__(self, tx: Tx, celery: Celery, settings: Settings) -> None:
        self.tx, self.celery, self.settings = tx, celery, settings
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """(Re)start: an app's lifespan may run more than once (test clients open it per use)."""
        if self._thread is not None and self._thread.is_alive():
            return
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="dispatcher", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def _loop(self) -> None:
        stop = self._stop
        while not stop.wait(self.settings.dispatch_interval_seconds):
            try:
                send_unsent(self.tx, self.celery, self.settings)
            except Exception:  # the database may be away for a moment; the next round retries
                log.exception("dispatch round failed")
