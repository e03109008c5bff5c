"""Runs one claimed job through the library and records what happens, whatever happens.

The trainer drives; the callbacks here persist each epoch and each checkpoint, and answer "should I
stop?" from flags alone (no database round trip per step). The flags are set by what the database
says with every write the worker makes anyway: the heartbeat thread's beat (every heartbeat_seconds,
so a long epoch is cut short) and the end of each epoch (so a short one never runs past the epoch in
which a cancel was asked). Either write also says whether this worker still owns the job and whether
the job ran past its wall-clock limit.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import defaultdict
from dataclasses import asdict
from typing import Any

from alignahead.datasets import DatasetError, load_dataset
from alignahead.enums import JobStatus
from alignahead.metrics import EpochMetrics
from alignahead.parallel import RankFailed
from alignahead.spec import JobSpec
from alignahead.trainer import Callbacks, Checkpoint, Trainer, TrainResult
from service.core import dispatch, jobcore
from service.core.jobcore import Claim, Signals
from worker import monitoring, store
from worker.context import WorkerContext, shutting_down
from worker.joblog import JobLogHandler

log = logging.getLogger("alignahead.worker")
MAX_ERROR_CHARS = 4000


class LostClaim(Exception):
    """Another worker took the job over (this one was presumed dead); stop without writing."""


def error_message(exc: BaseException) -> str:
    text = str(exc) if isinstance(exc, DatasetError) else f"{type(exc).__name__}: {exc}"
    return text[:MAX_ERROR_CHARS]


class Flags:
    """Why the job should stop, as events any thread may set and the training step reads for free."""

    def __init__(self, cancel_requested: bool) -> None:
        self.lost = threading.Event()
        self.cancel = threading.Event()
        self.over_time = threading.Event()
        if cancel_requested:
            self.cancel.set()

    def apply(self, signals: Signals) -> None:
        if not signals.owned:
            self.lost.set()
        if signals.cancel_requested:
            self.cancel.set()
        if signals.over_time:
            self.over_time.set()

    def stop(self) -> bool:
        return self.lost.is_set() or self.cancel.is_set() or self.over_time.is_set() or shutting_down.is_set()


class Heartbeat:
    """Renews the job's lease every heartbeat_seconds in its own thread, and reads its flags."""

    def __init__(self, ctx: WorkerContext, claim: Claim, flags: Flags, logs: JobLogHandler | None = None) -> None:
        self.ctx, self.claim, self.flags, self.logs = ctx, claim, flags, logs
        self.beats = threading.Event()  # set after each beat: tests wait on it
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
                    signals = jobcore.heartbeat(s, self.claim, self.ctx.lease)
            except Exception:  # a database hiccup: try again next beat
                log.warning("heartbeat of job %s failed", self.claim.job_id, exc_info=True)
                continue
            self.flags.apply(signals)
            if self.logs is not None:
                self.logs.flush()  # lines of a long step (loading a dataset) show while it runs
            self.beats.set()
            if not signals.owned:
                return


class JobRunner:
    def __init__(self, ctx: WorkerContext, claim: Claim, logs: JobLogHandler | None = None) -> None:
        self.ctx = ctx
        self.claim = claim
        self.logs = logs  # the job's captured log, written with its epochs and before it ends
        self.spec: JobSpec  # parsed in _train, where a failure is recorded like any other
        self.settings = ctx.settings
        self.trainer: Trainer | None = None
        self.flags = Flags(claim.cancel_requested)
        self.seconds: dict[str, float] = defaultdict(float)  # time outside training, by what
        self._state_saved = time.monotonic()
        self._epoch_started = time.perf_counter()  # reset when training starts and after each epoch's write

    # --- the run ------------------------------------------------------------------------------

    def run(self) -> str:
        """The job's outcome: 'succeeded', 'failed', 'cancelled', 'requeued', or 'lost' (another worker
        has it)."""
        job_id = self.claim.job_id
        if self.flags.cancel.is_set():  # cancelled while no worker held it
            return self._finish(JobStatus.CANCELLED)
        t0 = time.perf_counter()
        try:
            with Heartbeat(self.ctx, self.claim, self.flags, self.logs):
                result = self._train()
        except LostClaim:
            log.warning("job %s was taken over by another worker; this delivery stops", job_id)
            return "lost"
        except RankFailed as e:
            return self._rank_lost(str(e))
        except Exception as e:
            log.exception("job %s failed", job_id)
            return self._finish(JobStatus.FAILED, error=error_message(e))
        finally:
            self._release_device()
        self._log_time(time.perf_counter() - t0)
        summaries = [asdict(s) for s in result.students]
        done = {"summaries": summaries, "epochs_done": result.epochs_done}
        if not result.cancelled:
            if result.stop_reason:
                log.info("job %s: %s", job_id, result.stop_reason)
            return self._finish(JobStatus.SUCCEEDED, stop_reason=result.stop_reason, **done)
        if self.flags.lost.is_set():
            log.warning("job %s was taken over by another worker; this delivery stops", job_id)
            return "lost"
        if self.flags.cancel.is_set():
            return self._finish(JobStatus.CANCELLED, **done)
        if self.flags.over_time.is_set():
            return self._finish(
                JobStatus.FAILED, error=jobcore.time_limit_message(self.claim.time_limit_seconds), **done
            )
        return self._hand_back()  # shutting down

    def _rank_lost(self, reason: str) -> str:
        """A rank of the parallel job died: the attempt is over (every rank stopped); requeue the job to
        resume from its stored state, as for a lost worker, up to ALIGNAHEAD_MAX_ATTEMPTS."""
        log.warning("job %s: %s", self.claim.job_id, reason)
        self._flush_logs()
        with self.ctx.tx() as s:
            status = jobcore.lose_rank(s, self.claim, reason, max_attempts=self.settings.max_attempts)
        if status is None:
            return "lost"
        if status == JobStatus.FAILED:
            log.warning("job %s failed: its ranks died %d time(s)", self.claim.job_id, self.settings.max_attempts)
            return str(status)
        dispatch.send(self.ctx.tx, self.ctx.celery, self.settings, self.claim.job_id, self.claim.queue)
        log.warning("job %s requeued after a lost rank; it resumes from its saved state", self.claim.job_id)
        return "requeued"

    def _hand_back(self) -> str:
        log.warning("job %s: worker shutting down; handing the job back to the queue", self.claim.job_id)
        self._flush_logs()
        with self.ctx.tx() as s:
            if not jobcore.release(s, self.claim):
                return "lost"
        # if the broker is away, the job stays stored and unsent; the API's dispatcher sends it later
        dispatch.send(self.ctx.tx, self.ctx.celery, self.settings, self.claim.job_id, self.claim.queue)
        log.warning("job %s handed back to the queue (worker shutting down)", self.claim.job_id)
        return "requeued"

    def _train(self) -> TrainResult:
        self.spec = JobSpec.model_validate(self.claim.spec)
        t0 = time.perf_counter()
        with self.ctx.tx() as s:
            saved = store.resume_state(s, self.claim)
        log.info("job %s: loading dataset %r", self.claim.job_id, self.spec.dataset.name)
        dataset = load_dataset(
            self.spec.dataset,
            seed=self.spec.training.seed,
            resolve_upload=self._upload,
            max_bytes=self.settings.max_unpacked_bytes,
        )
        callbacks = Callbacks(on_epoch=self._on_epoch, on_checkpoint=self._on_checkpoint, should_cancel=self.flags.stop)
        devices = self.settings.worker_devices
        self.trainer = Trainer(self.spec, dataset, callbacks, devices=devices)
        if saved is not None:
            try:
                self.trainer.load_state_bytes(saved[1])
                log.info("job %s resumes after epoch %d", self.claim.job_id, self.trainer.epoch)
            except Exception:
                # the epochs are redone from the start; their stored rows are compared, not rewritten
                log.warning("job %s: stored training state unusable; starting over", self.claim.job_id, exc_info=True)
                self.trainer.close()
                self.trainer = Trainer(self.spec, dataset, callbacks, devices=devices)
        self.seconds["dataset and set-up"] += time.perf_counter() - t0
        log.info(
            "job %s: %d student(s), strategy %s, epochs %d to %d of %d (set-up took %.1f s)", self.claim.job_id,
            self.spec.num_students, self.spec.distillation.strategy, self.trainer.epoch + 1, self.spec.training.epochs,
            self.spec.training.epochs, self.seconds["dataset and set-up"],
        )  # fmt: skip
        self._epoch_started = time.perf_counter()
        return self.trainer.run()

    def _flush_logs(self) -> None:
        if self.logs is not None:
            self.logs.flush()

    def _finish(self, status: JobStatus, **kwargs: Any) -> str:
        if status != JobStatus.FAILED or "error" not in kwargs:
            log.info("job %s ends %s", self.claim.job_id, status)
        self._flush_logs()  # while the job is still ours: its last lines (a traceback) are kept
        with self.ctx.tx() as s:
            if not jobcore.finish(s, self.claim, status, **kwargs):
                log.warning("job %s: not recording %r, another worker owns it now", self.claim.job_id, status)
                return "lost"
        log.info("job %s %s", self.claim.job_id, status)
        return str(status)

    def _log_time(self, wall: float) -> None:
        outside = sum(self.seconds.values())
        parts = ", ".join(f"{k} {v:.2f} s" for k, v in self.seconds.items())
        log.info(
            "job %s: %.2f s in the worker, %.2f s (%.1f %%) outside training: %s",
            self.claim.job_id, wall, outside, 100 * outside / wall if wall else 0.0, parts,
        )  # fmt: skip

    def _release_device(self) -> None:
        if self.trainer is not None:
            self.trainer.close(abort=True)  # a parallel job's ranks, if the run did not end them
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
            return store.upload_bytes(s, self.claim, upload_id)

    def _on_epoch(self, metrics: list[EpochMetrics]) -> None:
        t0 = time.perf_counter()
        epoch = metrics[0].epoch
        assert self.trainer is not None  # callbacks fire only inside trainer.run()
        device = self.trainer.device.type
        monitoring.EPOCHS.labels(device).inc()
        monitoring.EPOCH_SECONDS.labels(device).observe(t0 - self._epoch_started)
        summaries = [asdict(s) for s in self.trainer.summaries]  # updated before on_epoch is called
        state = None
        due = time.monotonic() - self._state_saved >= self.settings.state_every_seconds
        if epoch % self.settings.state_every_epochs == 0 and due and epoch < self.spec.training.epochs:
            state = self.trainer.state_bytes()  # consistent here: the epoch is complete
            self._state_saved = time.monotonic()
        with self.ctx.tx() as s:
            outcome = jobcore.record_epoch(
                s,
                self.claim,
                self.ctx.lease,
                metrics,
                epoch=epoch,
                summaries=summaries,
                state=state,
                maybe_redone=epoch <= self.claim.epochs_done,
            )
        self.flags.apply(outcome.signals)
        if outcome.mismatches:
            log.warning("job %s: epoch %d redone after a resume differs from the stored rows, which are kept: %s",
                        self.claim.job_id, epoch, "; ".join(outcome.mismatches))  # fmt: skip
        self._flush_logs()
        self._epoch_started = time.perf_counter()
        self.seconds["epoch writes"] += self._epoch_started - t0
        if self.flags.lost.is_set():
            raise LostClaim

    def _on_checkpoint(self, ckpt: Checkpoint) -> None:
        t0 = time.perf_counter()
        with self.ctx.tx() as s:
            ok = jobcore.store_checkpoint(
                s, self.claim, student=ckpt.student, kind=ckpt.kind, epoch=ckpt.epoch, score=ckpt.score, data=ckpt.data
            )
        self.seconds["checkpoint writes"] += time.perf_counter() - t0
        if not ok:
            self.flags.lost.set()
            raise LostClaim
