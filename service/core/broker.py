"""The Celery app as configured from Settings, and the one way a job enters the queue.

The API only sends tasks by name, so it never imports the worker's training code (or torch's CUDA
setup); the worker (worker/app.py) builds the same app and registers the task.
"""

from __future__ import annotations

from typing import Any

from celery import Celery
from kombu import Queue

from alignahead.enums import Queue as JobQueue
from service.core.settings import Settings

RUN_JOB = "alignahead.run_job"


def is_sqla_broker(url: str) -> bool:
    return url.startswith(("sqla+", "sqlalchemy+"))


def transport_options(settings: Settings) -> dict[str, Any]:
    if is_sqla_broker(settings.broker_url):
        # passed to create_engine: wait for SQLite's write lock instead of failing at once
        return {"connect_args": {"timeout": 30}} if "sqlite" in settings.broker_url else {}
    if settings.broker_url.startswith(("redis://", "rediss://")):
        options: dict[str, Any] = {
            # an unacknowledged message comes back after this long; a job may run for days
            "visibility_timeout": settings.redis_visibility_timeout,
            # a blackholed broker must not hold a submission for the OS's connect timeout
            "socket_connect_timeout": settings.broker_timeout_seconds,
            "socket_timeout": max(settings.broker_timeout_seconds, 5.0),
        }
        if settings.queue_prefix:
            options["global_keyprefix"] = settings.queue_prefix
        return options
    return {}


def make_celery(settings: Settings, include: list[str] | None = None) -> Celery:
    app = Celery("alignahead", broker=settings.broker_url, include=include or [])
    embedded = is_sqla_broker(settings.broker_url)
    app.conf.update(
        broker_transport_options=transport_options(settings),
        broker_connection_retry_on_startup=True,
        broker_connection_timeout=settings.broker_timeout_seconds,
        task_serializer="json",
        accept_content=["json"],
        task_ignore_result=True,  # the database, not a result backend, holds outcomes
        # Long GPU jobs: acknowledge after the task, take one message at a time, and hand a message
        # back if the process running it dies.
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        # a broker blip must not kill hours of training: the task runs on, and the database's
        # claim makes the redelivered message a harmless duplicate
        worker_cancel_long_running_tasks_on_connection_loss=False,
        task_queues=[Queue(settings.queue_name(q)) for q in JobQueue],
        task_default_queue=settings.queue_name("cpu"),
        task_create_missing_queues=False,
        # kombu's SQL transport has no fanout exchange, which remote control needs
        worker_enable_remote_control=not embedded,
        worker_send_task_events=False,
        worker_hijack_root_logger=False,
    )
    return app


def enqueue(app: Celery, settings: Settings, job_id: str, queue: str) -> None:
    """Send the job's id (and nothing else) to its queue; raises if the broker does not take it soon.

    No retries here: a job that could not be sent stays stored with no `enqueued_at`, and the API's
    dispatcher (service.core.dispatch) sends it as soon as the broker answers again.
    """
    app.send_task(
        RUN_JOB,
        args=[job_id],
        queue=settings.queue_name(queue),
        retry=False,
    )


def declare_queues(app: Celery, settings: Settings) -> None:
    """Create the queues once, before several processes start: kombu's SQL transport creates a queue's
    row with a check-then-insert, so two processes declaring it at the same moment on a fresh broker
    database race, and the loser exits."""
    with app.connection_for_write() as conn:
        for queue in JobQueue:
            Queue(settings.queue_name(queue)).bind(conn.default_channel).declare()
