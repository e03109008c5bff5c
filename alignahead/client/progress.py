"""Progress while waiting: of a job's epochs (with each student's best validation score so far) and of a
study's finished jobs.

On a terminal a bar that redraws itself (tqdm). Written to a file or a pipe a redrawing bar would leave
a line per refresh, so there it is a few plain lines instead: one when waiting starts, one per quarter
of the work and one whenever the status changes.
"""

from __future__ import annotations

import sys
from typing import Any, TextIO

from tqdm.auto import tqdm

from alignahead.client.events import Event

QUARTERS = 4  # plain lines: one per quarter of the work done


def is_terminal(file: TextIO) -> bool:
    try:
        return file.isatty()
    except (AttributeError, ValueError):  # no isatty, or closed
        return False


def percent(score: float | None) -> str:
    """A score (accuracy, micro-F1: a fraction) in percent, as the dashboard shows it."""
    return "-" if score is None else f"{100 * score:.1f} %"


class Progress:
    """A count of `unit`s done out of a total, with a status text: a tqdm bar on a terminal, else lines."""

    def __init__(
        self, desc: str, unit: str, total: int | None, done: int, *, enabled: bool, file: TextIO | None
    ) -> None:
        self.file = file if file is not None else sys.stderr
        self.desc, self.unit = desc, unit
        self.lines = enabled and not is_terminal(self.file)
        self.bar = tqdm(total=total, initial=done, unit=unit, desc=desc, disable=not enabled or self.lines,
                        file=file, dynamic_ncols=True)  # fmt: skip
        self.total, self.done = total, done
        self._last_line: tuple[str, int] | None = None

    def set_total(self, total: int | None) -> None:
        if total and total != self.total:
            self.total = self.bar.total = total

    def advance_to(self, done: int) -> None:
        if done > self.done:
            self.bar.update(done - self.done)
            self.done = done

    def show(self, status: str, detail: str = "") -> None:
        self.bar.set_postfix_str(status + (f" {detail}" if detail else ""), refresh=True)
        if not self.lines:
            return
        quarter = self.done * QUARTERS // self.total if self.total else 0
        if self._last_line == (status, quarter):
            return
        self._last_line = (status, quarter)
        share = f" ({100 * self.done // self.total} %)" if self.total else ""
        text = f"{self.desc}: {status}, {self.unit} {self.done}/{self.total or '?'}{share}"
        print(text + (f", {detail}" if detail else ""), file=self.file, flush=True)

    def close(self) -> None:
        self.bar.close()


class EpochBar:
    """Fed with a job's events; shows epochs done of the total, the status and the best scores."""

    def __init__(self, job: dict[str, Any], *, enabled: bool = True, file: TextIO | None = None) -> None:
        progress = job.get("progress") or {}
        self.best: dict[int, float] = {}
        self.num_students = len(job.get("students") or []) or 1
        self.status = job.get("status", "")
        self.progress = Progress(f"job {job.get('id', '')[:8]}", "epoch", progress.get("total"),
                                 progress.get("epoch", 0), enabled=enabled, file=file)  # fmt: skip
        self._students(job)
        self._show()

    def _students(self, job: dict[str, Any]) -> None:
        for s in job.get("students") or []:
            if s.get("best_val") is not None:
                self.best[s["student"]] = max(self.best.get(s["student"], s["best_val"]), s["best_val"])

    def _show(self) -> None:
        scores = " ".join(f"s{i}={percent(v)}" for i, v in sorted(self.best.items()))
        self.progress.show(self.status, f"best val {scores}" if scores else "")

    def update(self, event: Event) -> None:
        data = event.data
        if event.kind == "metric":
            val = data.get("val_score")
            if val is not None and val > self.best.get(data["student"], float("-inf")):
                self.best[data["student"]] = val
            # an epoch is done when its last student's row arrives
            last = data["student"] >= self.num_students - 1
            self.progress.advance_to(data["epoch"] if last else data["epoch"] - 1)
        else:
            self.status = data["status"]
            progress = data.get("progress") or {}
            self.progress.set_total(progress.get("total"))
            self.progress.advance_to(progress.get("epoch", 0))
            self.num_students = len(data.get("students") or []) or self.num_students
            self._students(data)
        self._show()

    def close(self) -> None:
        self.progress.close()
