"""Runs one claimed job through the library and records what happens, whatever happens.

The trainer drives; the callbacks here persist each epoch, each checkpoint, and answer "should I stop?"
(cancelled by a user, or this worker lost the job to another). A background thread beats the heartbeat
so that a long epoch never looks like a dead worker.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import asdict
from typing import Any

from alignahead.datasets import DatasetError, load_dataset
from alignahead.spec import JobSpec
from alignahead.trainer import Callbacks, Checkpoint, EpochMetrics, Trainer, TrainResult
from service.broker import enqueue
from worker import store
from worker.context import WorkerContext, shutting_down

log = logging.getLogger("alignahead.worker")
MAX_ERROR_CHARS = 4000


class LostClaim(Exception):
    """Another worker took the job over (this one was presumed dead); stop without writing."""


def error_message(exc: BaseException) -> str:
    text = str(exc) if isinstance(exc, DatasetError) else f"{type(exc).__name__}: {exc}"
    return text[:MAX_ERROR_CHARS]


class Heartbeat:
    """Beats every heartbeat_seconds in its own thread while the job runs."""

    def __init__(self, ctx: WorkerContext, claim: store.Claim) -> None:
        self.ctx, self.claim = ctx, claim
        self.lost = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=f"heartbeat-{claim.job_id}", daemon=True)

    def __enter__(self) -> Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def _loop(self) -> None:
        while not self._stop.wait(self.ctx.settings.heartbeat_seconds):
            try:
                with self.ctx.tx() as s:
                    if not store.heartbeat(s, self.claim):
                        self.lost.set()
                        return
            except Exception:  # a database hiccup: try again next beat
                log.warning("heartbeat of job %s failed", self.claim.job_id, exc_info=True)


class JobRunner:
    def __init__(self, ctx: WorkerContext, claim: store.Claim) -> None:
        self.ctx = ctx
        self.claim = claim
        self.spec: JobSpec  # parsed in _train, where a failure is recorded like any other
        self.settings = ctx.settings
        self.trainer: Trainer | None = None
        self.heartbeat: Heartbeat | None = None
        self._cancel = False
        self._lost = False
        self._suspend = False
        self._last_poll = 0.0

    # --- the run ------------------------------------------------------------------------------

    def run(self) -> str:
        """The job's outcome: 'succeeded', 'failed', 'cancelled', or 'lost' (another worker has it)."""
        job_id = self.claim.job_id
        if self.claim.cancel_requested:  # cancelled while no worker held it
            return self._finish("cancelled")
        try:
            with Heartbeat(self.ctx, self.claim) as self.heartbeat:
                result = self._train()
        except LostClaim:
            log.warning("job %s was taken over by another worker; this delivery stops", job_id)
            return "lost"
        except Exception as e:
            log.exception("job %s failed", job_id)
            return self._finish("failed", error=error_message(e))
        finally:
            self._release_device()
        summaries = [asdict(s) for s in result.students]
        if result.cancelled and self._suspend and not self._cancel:
            return self._hand_back()
        status = "cancelled" if result.cancelled else "succeeded"
        return self._finish(status, summaries=summaries, epochs_done=result.epochs_done)

    def _hand_back(self) -> str:
        with self.ctx.tx() as s:
            if not store.release(s, self.claim):
                return "lost"
        try:
            enqueue(self.ctx.celery, self.settings, self.claim.job_id, self.claim.queue)
        except Exception:  # still queued in the database: the orphan sweep re-sends it
            log.exception("job %s: could not re-enqueue while shutting down", self.claim.job_id)
        log.warning("job %s handed back to the queue (worker shutting down)", self.claim.job_id)
        return "requeued"

    def _train(self) -> TrainResult:
        self.spec = JobSpec.model_validate(self.claim.spec)
        with self.ctx.tx() as s:
            point = store.prepare_resume(s, self.claim, [st.arch for st in self.spec.expanded_students()])
        dataset = load_dataset(
            self.spec.dataset,
            seed=self.spec.training.seed,
            data_dir=self.settings.data_dir,
            resolve_upload=self._upload,
        )
        callbacks = Callbacks(
            on_epoch=self._on_epoch, on_checkpoint=self._on_checkpoint, should_cancel=self._should_cancel
        )
        self.trainer = Trainer(self.spec, dataset, callbacks)
        if point.state is not None:
            try:
                self.trainer.load_state_bytes(point.state)
                log.info("job %s resumes after epoch %d", self.claim.job_id, self.trainer.epoch)
            except Exception:
                log.warning("job %s: stored training state unusable; starting over", self.claim.job_id, exc_info=True)
                with self.ctx.tx() as s:
                    store.reset_progress(s, self.claim)
                self.trainer = Trainer(self.spec, dataset, callbacks)
        return self.trainer.run()

    def _finish(self, status: str, **kwargs: Any) -> str:
        with self.ctx.tx() as s:
            if not store.finish(s, self.claim, status, **kwargs):
                log.warning("job %s: not recording %r, another worker owns it now", self.claim.job_id, status)
                return "lost"
        log.info("job %s %s", self.claim.job_id, status)
        return status

    def _release_device(self) -> None:
        self.trainer = None
        try:
            import torch

            if torch.cuda.is_available():
                torch.cuda.empty_cache()  # the next job on this GPU gets the memory back
        except Exception:  # pragma: no cover - best effort
            pass

    # --- callbacks ----------------------------------------------------------------------------

    def _upload(self, upload_id: str) -> bytes:
        with self.ctx.tx() as s:
            return store.upload_bytes(s, upload_id)

    def _on_epoch(self, metrics: list[EpochMetrics]) -> None:
        epoch = metrics[0].epoch
        assert self.trainer is not None  # callbacks fire only inside trainer.run()
        summaries = [asdict(s) for s in self.trainer.summaries]  # updated before on_epoch is called
        state = None
        if epoch % self.settings.state_every_epochs == 0 and epoch < self.spec.training.epochs:
            state = self.trainer.state_bytes()  # consistent here: the epoch is complete
        rows = [asdict(m) for m in metrics]
        with self.ctx.tx() as s:
            if not store.record_epoch(s, self.claim, rows, epochs_done=epoch, summaries=summaries, state=state):
                self._lost = True
        if self._lost:
            raise LostClaim

    def _on_checkpoint(self, ckpt: Checkpoint) -> None:
        with self.ctx.tx() as s:
            ok = store.store_checkpoint(
                s, self.claim, student=ckpt.student, kind=ckpt.kind, epoch=ckpt.epoch, score=ckpt.score, data=ckpt.data
            )
        if not ok:
            self._lost = True
            raise LostClaim

    def _should_cancel(self) -> bool:
        if self.heartbeat is not None and self.heartbeat.lost.is_set():
            self._lost = True
        if shutting_down.is_set():
            self._suspend = True
        if self._lost or self._cancel or self._suspend:
            return True
        now = time.monotonic()
        if now - self._last_poll < self.settings.cancel_poll_seconds:
            return False  # polled at most every cancel_poll_seconds, however fast the steps
        self._last_poll = now
        with self.ctx.tx() as s:
            owned, cancel = store.poll(s, self.claim)
        self._lost, self._cancel = not owned, cancel
        return self._lost or self._cancel
