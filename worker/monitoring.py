"""Prometheus metrics of one worker process, served on its own port (`worker_metrics_port`, off unset).

A worker runs its jobs in its own process (`--pool solo`, as the README runs it), so these counters
need no multiprocess files: each worker process is one scrape target, on a port of its own. What it
says: epochs it trained and their seconds, jobs it runs now and how its deliveries ended, its process
(memory, CPU) and, in `alignahead_worker_info`, which device it trains on.
"""

from __future__ import annotations

import logging

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector, start_http_server

log = logging.getLogger("alignahead.worker")

REGISTRY = CollectorRegistry()
ProcessCollector(registry=REGISTRY)
EPOCH_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0)

EPOCHS = Counter(
    "alignahead_worker_epochs",
    "Epochs this worker trained (every student's pass and evaluation), by the device they ran on.",
    ["device"],
    registry=REGISTRY,
)
EPOCH_SECONDS = Histogram(
    "alignahead_worker_epoch_seconds",
    "Wall-clock seconds of each epoch (training every student, evaluation, checkpoints; not the epoch's write).",
    ["device"],
    buckets=EPOCH_BUCKETS,
    registry=REGISTRY,
)
JOBS_RUNNING = Gauge("alignahead_worker_jobs_running", "Jobs this worker is running now.", registry=REGISTRY)
DELIVERIES = Counter(
    "alignahead_worker_jobs",
    "Job deliveries this worker ended, by outcome: succeeded, failed, cancelled, requeued (handed back at "
    "shutdown), lost (another worker took the job over), dropped (not claimable: a duplicate), deferred.",
    ["outcome"],
    registry=REGISTRY,
)
INFO = Gauge(
    "alignahead_worker_info",
    "1, labelled with this worker's name (host:pid, as jobs show it) and its device: 'cuda' with the GPU's "
    "name where CUDA is available, else 'cpu'.",
    ["worker", "device", "device_name"],
    registry=REGISTRY,
)


def _device() -> tuple[str, str]:
    import torch

    if torch.cuda.is_available():
        return "cuda", torch.cuda.get_device_name(torch.cuda.current_device())
    return "cpu", "cpu"


OUTCOMES = ("succeeded", "failed", "cancelled", "requeued", "lost", "dropped", "deferred")


def serve(host: str, port: int, worker: str) -> bool:
    """Start the exposition server in a daemon thread; False (logged) if the port cannot be had."""
    device, name = _device()
    INFO.labels(worker, device, name).set(1)
    EPOCHS.labels(device)  # zeros from the start, so rates need no first epoch
    EPOCH_SECONDS.labels(device)
    for outcome in OUTCOMES:
        DELIVERIES.labels(outcome)
    try:
        start_http_server(port, addr=host, registry=REGISTRY)
    except OSError as e:
        log.error("worker metrics not served: cannot listen on %s:%d (%s); set ALIGNAHEAD_WORKER_METRICS_PORT "
                  "to a free port for each worker process", host, port, e)  # fmt: skip
        return False
    log.info("worker metrics at http://%s:%d/metrics", host, port)
    return True
