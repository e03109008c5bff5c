"""The Celery app of the workers: `celery -A worker.app worker -Q cpu` (or gpu, or cpu,gpu).

Built from Settings (ALIGNAHEAD_* environment variables); the task itself lives in worker.tasks.
"""

from __future__ import annotations

import logging
from typing import Any

from celery.signals import worker_ready, worker_shutting_down

from service.broker import make_celery
from service.settings import Settings

log = logging.getLogger("alignahead.worker")

app = make_celery(Settings(), include=["worker.tasks"])

_sweepers: list[Any] = []


@worker_ready.connect
def _start_sweeper(**_kwargs: Any) -> None:
    from worker.context import get_worker_context
    from worker.sweep import Sweeper

    sweeper = Sweeper(get_worker_context(app))
    sweeper.start()
    _sweepers.append(sweeper)
    log.info("alignahead worker ready; orphan sweep started")


@worker_shutting_down.connect
def _shutting_down(**_kwargs: Any) -> None:
    from worker.context import shutting_down

    shutting_down.set()  # a running job hands itself back instead of holding the shutdown
    for sweeper in _sweepers:
        sweeper.stop()
