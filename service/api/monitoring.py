"""Prometheus metrics of the API: its requests, and the job table as an operator sees it.

`GET /metrics` (routes/monitoring.py) is served only when `metrics_token` is set, to requests that
send it as a bearer token: the figures span every tenant, and the API's port is the one tenants
reach, so neither their keys nor an open route would do. Prometheus sends such a token itself
(`authorization: {credentials_file: ...}` in a scrape config).

Requests are counted and timed by `RequestMetrics`, an ASGI middleware, labelled by the route's
template (`/v1/jobs/{job_id}`, never the raw path: one series per route, not per job), the method and
the status. Under several uvicorn worker processes each process counts its own; with `metrics_dir`
set they write to files there (prometheus-client's multiprocess mode) and whichever process answers
a scrape sums them all.

The job table (`JobGauges`) is read from the database at scrape time, one grouped query, reused for
`metrics_cache_seconds`: it is the same whichever process answers, so it needs no files.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, values
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector
from starlette.routing import BaseRoute
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from alignahead.enums import JobStatus, Queue
from service.core.repository import JobTally

CONTENT_TYPE = CONTENT_TYPE_PLAIN_0_0_4  # what generate_latest writes; every Prometheus reads it
UNMATCHED = "unmatched"  # the route label of a request no route matches (any 404 path: one series)
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})  # others: "other"
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


def use_multiprocess_dir(path: Path) -> None:
    """Count in files under `path` from now on (prometheus-client's multiprocess mode). The library
    picks its mode from PROMETHEUS_MULTIPROC_DIR when first imported; the setting may come later (a
    uvicorn factory runs after the imports), so the value class is switched here, as its tests do."""
    path.mkdir(parents=True, exist_ok=True)
    switched = getattr(values.ValueClass, "_multiprocess", False)
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR") != str(path) or not switched:
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(path)
        values.ValueClass = values.get_value_class()


class JobGauges:
    """A collector: the job table as gauges, from `read()` (a JobTally), cached for `ttl` seconds."""

    def __init__(self, read: Callable[[], JobTally], ttl: float) -> None:
        self.read, self.ttl = read, ttl
        self._lock = threading.Lock()
        self._tally: JobTally | None = None
        self._expires = 0.0

    def tally(self) -> JobTally:
        with self._lock:  # one reading at a time; concurrent scrapes share it
            if self._tally is None or time.monotonic() >= self._expires:
                self._tally = self.read()
                self._expires = time.monotonic() + self.ttl
            return self._tally

    def describe(self) -> Iterable[Metric]:
        return self._families()  # names only: registering reads nothing

    def collect(self) -> Iterable[Metric]:
        return self._families(self.tally())

    @staticmethod
    def _families(tally: JobTally | None = None) -> list[Metric]:
        labels = ["status", "queue"]
        jobs = GaugeMetricFamily("alignahead_jobs", "Stored jobs, every tenant's, by status and queue.", labels=labels)
        attempts = GaugeMetricFamily(
            "alignahead_job_attempts",
            "Times a worker started or resumed the stored jobs of this status and queue, summed.",
            labels=labels,
        )
        lost = GaugeMetricFamily(
            "alignahead_job_lost_workers",
            "Times the stored jobs of this status and queue were taken back from a dead or stalled worker, summed.",
            labels=labels,
        )
        oldest = GaugeMetricFamily(
            "alignahead_oldest_queued_job_age_seconds",
            "Seconds since the oldest job still queued in this queue was submitted (0: none queued).",
            labels=["queue"],
        )
        if tally is None:
            return [jobs, attempts, lost, oldest]
        by_key = {(g.status, g.queue): g for g in tally.groups}
        for queue in Queue:
            for status in JobStatus:
                key = [str(status), str(queue)]
                g = by_key.get((key[0], key[1]))
                jobs.add_metric(key, g.jobs if g else 0)
                attempts.add_metric(key, g.attempts if g else 0)
                lost.add_metric(key, g.lost_workers if g else 0)
            queued = by_key.get((str(JobStatus.QUEUED), str(queue)))
            first = queued.oldest_created_at if queued else None
            oldest.add_metric([str(queue)], max(0.0, (tally.now - first).total_seconds()) if first else 0.0)
        return [jobs, attempts, lost, oldest]


@dataclass
class ApiMetrics:
    """The API's request metrics and the registry /metrics exposes."""

    requests: Counter
    latency: Histogram
    registry: CollectorRegistry

    @classmethod
    def build(cls, job_gauges: JobGauges, multiprocess_dir: Path | None) -> ApiMetrics:
        registry = CollectorRegistry()
        if multiprocess_dir is not None:
            use_multiprocess_dir(multiprocess_dir)
            MultiProcessCollector(registry, path=str(multiprocess_dir))
            own = None  # the files are exposed, not this process's objects (they would count twice)
        else:
            own = registry
        labels = ["method", "route", "status"]
        requests = Counter(
            "alignahead_http_requests", "HTTP requests answered, by route template, method and status.", labels,
            registry=own,
        )  # fmt: skip
        latency = Histogram(
            "alignahead_http_request_duration_seconds",
            "Time from a request's arrival to the end of its answer (an event stream: until it closes).",
            labels,
            registry=own,
            buckets=LATENCY_BUCKETS,
        )
        registry.register(job_gauges)
        return cls(requests, latency, registry)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


def route_template(routes: list[BaseRoute], scope: Scope) -> str:
    """The template of the route that answered (FastAPI leaves it in the scope), else of the first
    route whose path matches (a request answered before routing: the polling fast path, a guard's
    413), by its path pattern alone: a few regular expressions, not the routes' full matching."""
    route = scope.get("route")
    if route is not None:
        return getattr(route, "path", UNMATCHED)
    path = scope["path"]
    for candidate in routes:
        pattern = getattr(candidate, "path_regex", None)
        if pattern is not None and pattern.match(path):
            return getattr(candidate, "path", UNMATCHED)
    return UNMATCHED


class RequestMetrics:
    """ASGI middleware: counts and times every HTTP request by route template, method and status."""

    def __init__(self, app: ASGIApp, metrics: ApiMetrics, routes: list[BaseRoute]) -> None:
        self.app, self.metrics, self.routes = app, metrics, routes
        # (method, route, status) -> its counter and histogram: bounded, as every label is
        self._series: dict[tuple[str, str, str], tuple[Any, Any]] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        t0 = time.perf_counter()
        status = 500  # if the app raises before it answers, the server answers 500

        async def send_and_note(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_and_note)
        finally:
            method = scope["method"] if scope["method"] in METHODS else "other"
            labels = (method, route_template(self.routes, scope), str(status))
            series = self._series.get(labels)
            if series is None:
                series = self._series[labels] = (
                    self.metrics.requests.labels(*labels),
                    self.metrics.latency.labels(*labels),
                )
            series[0].inc()
            series[1].observe(time.perf_counter() - t0)
