"""The Celery app of the workers: `celery -A worker.app worker -Q cpu` (or gpu, or cpu,gpu).

Built from Settings (ALIGNAHEAD_* environment variables); the task itself lives in worker.tasks.
"""

from __future__ import annotations

import logging
from typing import Any

from celery.signals import after_setup_logger, after_setup_task_logger, worker_ready, worker_shutting_down

from service.core.broker import make_celery
from service.core.settings import Settings

log = logging.getLogger("alignahead.worker")

settings = Settings()
app = make_celery(settings, include=["worker.tasks"])

_sweepers: list[Any] = []


@after_setup_logger.connect
@after_setup_task_logger.connect
def _log_format(logger: logging.Logger, **_kwargs: Any) -> None:
    """log_format 'json': Celery's handlers write JSON lines, with the running job's fields."""
    if settings.log_format == "json":
        from service.core.logs import json_handlers
        from worker.joblog import JSON_FILTER

        json_handlers(logger.handlers, extra_filter=JSON_FILTER)


@worker_ready.connect
def _start_sweeper(**_kwargs: Any) -> None:
    from worker.context import get_worker_context
    from worker.sweep import Sweeper

    ctx = get_worker_context(app)
    sweeper = Sweeper(ctx)
    sweeper.start()
    _sweepers.append(sweeper)
    if ctx.settings.worker_metrics_port is not None:
        from worker import monitoring

        monitoring.serve(ctx.settings.worker_metrics_host, ctx.settings.worker_metrics_port, ctx.name)
    log.info("alignahead worker ready; orphan sweep started")


@worker_shutting_down.connect
def _shutting_down(**_kwargs: Any) -> None:
    from worker.context import shutting_down

    shutting_down.set()  # a running job hands itself back instead of holding the shutdown
    for sweeper in _sweepers:
        sweeper.stop()
