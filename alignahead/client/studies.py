"""A study on the service, as a Python object: its jobs' progress, the results table, cancel and delete."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any, TextIO

from alignahead.client.errors import NotFound
from alignahead.client.jobs import Job
from alignahead.client.progress import Progress
from alignahead.client.transport import Http
from alignahead.enums import FINISHED


class Study:
    """One study. Attributes mirror the last answer of `GET /v1/studies/{id}`; `refresh()` asks again."""

    def __init__(self, http: Http, data: dict[str, Any]) -> None:
        self._http = http
        self.data = data

    def __repr__(self) -> str:
        return f"<Study {self.id} {self.name or ''} {self.finished}/{self.total} jobs finished>"

    @property
    def id(self) -> str:
        return self.data["id"]

    @property
    def name(self) -> str | None:
        return self.data.get("name")

    @property
    def counts(self) -> dict[str, int]:
        """Jobs per status."""
        return self.data.get("counts") or {}

    @property
    def total(self) -> int:
        return int(self.data.get("jobs", 0))

    @property
    def finished(self) -> int:
        return sum(self.counts.get(s, 0) for s in FINISHED)

    @property
    def done(self) -> bool:
        """No job is queued or running."""
        return bool(self.data.get("done"))

    @property
    def axes(self) -> dict[str, list[Any]]:
        return self._detail()["axes"]

    @property
    def seeds(self) -> list[int]:
        return self._detail()["seeds"]

    def _detail(self) -> dict[str, Any]:
        if "table" not in self.data:  # a summary from a listing
            self.refresh()
        return self.data

    def refresh(self) -> Study:
        self.data = self._http.json("GET", f"/v1/studies/{self.id}")
        return self

    def wait(
        self,
        progress: bool = True,
        *,
        timeout: float | None = None,
        poll_interval: float = 1.0,
        file: TextIO | None = None,
    ) -> Study:
        """Block until no job of the study is queued or running, with a bar of finished jobs (a few
        plain lines when `file`, by default stderr, is not a terminal).

        TimeoutError after `timeout` seconds (the jobs go on). Failed jobs do not raise: the table counts
        only succeeded ones, and `counts` says how many failed."""
        deadline = None if timeout is None else time.monotonic() + timeout
        self.refresh()
        bar = Progress(f"study {self.id[:8]}", "job", self.total, self.finished, enabled=progress, file=file)
        try:
            while True:
                bar.set_total(self.total)
                bar.advance_to(self.finished)
                shown = {k: v for k, v in self.counts.items() if v}
                bar.show("done" if self.done else "running", " ".join(f"{k}={v}" for k, v in shown.items()))
                if self.done:
                    return self
                if deadline is not None and time.monotonic() > deadline:
                    raise TimeoutError(f"study {self.id} still has unfinished jobs after {timeout} s; they go on")
                time.sleep(poll_interval)
                self.refresh()
        finally:
            bar.close()

    def table(self) -> list[dict[str, Any]]:
        """The results table, fresh: per cell (the axes' values) and student position, `test_at_best` and
        `best_val` with n, mean, std and `vs_baseline` (the paired comparison with the 'none' cell)."""
        return self.refresh().data["table"]

    def table_csv(self) -> str:
        """The same table as CSV text."""
        return self._http.request("GET", f"/v1/studies/{self.id}/table.csv").text

    def jobs(self, *, page_size: int = 100) -> Iterator[Job]:
        """The study's jobs, ordinary jobs, newest first."""
        cursor: str | None = None
        while True:
            params: dict[str, Any] = {"study": self.id, "limit": page_size}
            if cursor:
                params["cursor"] = cursor
            page = self._http.json("GET", "/v1/jobs", params=params)
            for data in page["jobs"]:
                yield Job(self._http, data)
            cursor = page.get("next_cursor")
            if not cursor:
                return

    def cancel(self) -> Study:
        """Cancel every unfinished job: queued ones never start, running ones stop within their epoch."""
        self.data = self._http.json("POST", f"/v1/studies/{self.id}/cancel", idempotent=True)
        return self

    def delete(self) -> None:
        """Delete the study and its jobs (all must have finished: cancel and wait first)."""
        try:
            self._http.request("DELETE", f"/v1/studies/{self.id}")
        except NotFound:
            pass  # a retried DELETE whose first try went through
