"""A progress bar of a job's epochs, with each student's best validation score so far."""

from __future__ import annotations

from typing import Any, TextIO

from tqdm.auto import tqdm

from alignahead.client.events import Event


class EpochBar:
    """Fed with a job's events; shows epochs done of the total, the status and the best scores."""

    def __init__(self, job: dict[str, Any], *, enabled: bool = True, file: TextIO | None = None) -> None:
        progress = job.get("progress") or {}
        self.best: dict[int, float] = {}
        self.num_students = len(job.get("students") or []) or 1
        self.status = job.get("status", "")
        self.bar = tqdm(
            total=progress.get("total"),
            initial=progress.get("epoch", 0),
            unit="epoch",
            desc=f"job {job.get('id', '')[:8]}",
            disable=not enabled,
            file=file,
            dynamic_ncols=True,
        )
        self._students(job)
        self._show()

    def _students(self, job: dict[str, Any]) -> None:
        for s in job.get("students") or []:
            if s.get("best_val") is not None:
                self.best[s["student"]] = max(self.best.get(s["student"], s["best_val"]), s["best_val"])

    def _advance(self, epoch: int) -> None:
        if epoch > self.bar.n:
            self.bar.update(epoch - self.bar.n)

    def _show(self) -> None:
        scores = " ".join(f"s{i}={v:.3f}" for i, v in sorted(self.best.items()))
        self.bar.set_postfix_str(f"{self.status}" + (f" best val {scores}" if scores else ""), refresh=True)

    def update(self, event: Event) -> None:
        data = event.data
        if event.kind == "metric":
            val = data.get("val_score")
            if val is not None and val > self.best.get(data["student"], float("-inf")):
                self.best[data["student"]] = val
            # an epoch is done when its last student's row arrives
            self._advance(data["epoch"] if data["student"] >= self.num_students - 1 else data["epoch"] - 1)
        else:
            self.status = data["status"]
            progress = data.get("progress") or {}
            if progress.get("total") and self.bar.total != progress["total"]:
                self.bar.total = progress["total"]
            self._advance(progress.get("epoch", 0))
            self.num_students = len(data.get("students") or []) or self.num_students
            self._students(data)
        self._show()

    def close(self) -> None:
        self.bar.close()
