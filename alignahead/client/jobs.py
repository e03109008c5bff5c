"""A job on the service, as a Python object: its state, live events, metrics, checkpoints and logs."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

import httpx

from alignahead import metrics
from alignahead.client.errors import (
    ChecksumMismatch,
    Conflict,
    JobFailed,
    NotFound,
    ServiceUnavailable,
)
from alignahead.client.events import FINISHED, Event, follow, metric_pages
from alignahead.client.progress import EpochBar
from alignahead.client.transport import Http
from alignahead.enums import JobStatus
from alignahead.spec import JobSpec

if TYPE_CHECKING:
    import pandas

    from alignahead.graph import Graph
    from alignahead.models import Student

CHECKPOINT_KINDS = ("best", "final")


class MetricRows(list[dict[str, Any]]):
    """A job's metric rows (dicts as the API returns them: seq, epoch, student, loss, task_loss,
    distill_loss, train_score, val_score, test_score, seconds, created_at), in increasing seq."""

    def for_student(self, student: int) -> MetricRows:
        return MetricRows(r for r in self if r["student"] == student)

    def as_dataframe(self) -> pandas.DataFrame:
        """The rows as a pandas DataFrame (pandas is optional: `pip install pandas`)."""
        try:
            import pandas
        except ImportError as e:
            raise ImportError("as_dataframe() needs pandas, which is not installed: pip install pandas") from e
        columns = ["seq", *metrics.FIELDS, "created_at"]
        frame = pandas.DataFrame(list(self), columns=columns if not self else None)
        if "created_at" in frame:
            frame["created_at"] = pandas.to_datetime(frame["created_at"])
        return frame


class Job:
    """One job. Attributes mirror the last answer of `GET /v1/jobs/{id}`; `refresh()` asks again."""

    def __init__(self, http: Http, data: dict[str, Any]) -> None:
        self._http = http
        self.data = data

    def __repr__(self) -> str:
        p = self.progress
        return f"<Job {self.id} {self.name or ''} {self.status} epoch {p.get('epoch')}/{p.get('total')}>"

    # --- state --------------------------------------------------------------------------------

    @property
    def id(self) -> str:
        return self.data["id"]

    @property
    def name(self) -> str | None:
        return self.data.get("name")

    @property
    def tags(self) -> list[str]:
        return list(self.data.get("tags") or [])

    @property
    def status(self) -> str:
        return self.data["status"]

    @property
    def done(self) -> bool:
        return self.status in FINISHED

    @property
    def progress(self) -> dict[str, int]:
        return self.data.get("progress") or {}

    @property
    def error(self) -> str | None:
        return self.data.get("error")

    def _detail(self) -> dict[str, Any]:
        if "spec" not in self.data:  # a summary from a listing: fetch the rest once
            self.refresh()
        return self.data

    @property
    def students(self) -> list[dict[str, Any]]:
        """Per student: arch, best_val, best_epoch, test_at_best."""
        return self._detail()["students"]

    @property
    def spec(self) -> JobSpec:
        return JobSpec.model_validate(self._detail()["spec"])

    def refresh(self) -> Job:
        self.data = self._http.json("GET", f"/v1/jobs/{self.id}")
        return self

    # --- following it -------------------------------------------------------------------------

    def events(self, since: int = 0, poll_interval: float = 1.0, timeout: float | None = None) -> Iterator[Event]:
        """Status changes and metric rows (seq > since) as they happen, until the job ends.

        TimeoutError after `timeout` seconds (the job goes on)."""
        for event in follow(self._http, self.id, since=since, poll_interval=poll_interval, timeout=timeout):
            if event.kind == "status":
                self.data = event.data
            yield event

    def wait(
        self,
        progress: bool = True,
        *,
        timeout: float | None = None,
        raise_on_failure: bool = True,
        poll_interval: float = 1.0,
        file: TextIO | None = None,
    ) -> Job:
        """Block until the job ends, showing a bar of epochs with the best validation scores so far (a
        few plain lines when `file`, by default stderr, is not a terminal).

        Raises JobFailed when it ends `failed` (unless raise_on_failure=False) and TimeoutError after
        `timeout` seconds (the job keeps running). A cancelled job is returned as it is.
        """
        bar = EpochBar(self.refresh().data, enabled=progress, file=file)
        try:
            if not self.done:
                for event in self.events(poll_interval=poll_interval, timeout=timeout):
                    bar.update(event)
        finally:
            bar.close()
        if self.status == JobStatus.FAILED and raise_on_failure:
            raise JobFailed(self)
        return self

    def metrics(self, student: int | None = None, *, page_size: int = 1000) -> MetricRows:
        """All metric rows so far (fetched `page_size` at a time), optionally of one student."""
        params = {} if student is None else {"student": student}
        return MetricRows(metric_pages(self._http, self.id, page=page_size, **params))

    def logs(self, since: int = 0) -> list[dict[str, Any]]:
        """The job's log lines kept by the service (seq > since): dicts with `seq`, `created_at`, `level`,
        `logger` and `message` (a failure's traceback included). The service keeps the first and the
        latest lines of a long log; a gap in `seq` shows where lines were dropped."""
        try:
            body = self._http.json("GET", f"/v1/jobs/{self.id}/logs", params={"since": since} if since else None)
        except NotFound:
            self.refresh()  # NotFound again if the job is what is missing
            raise NotFound(404, "this service keeps no job logs (GET /v1/jobs/{id}/logs); upgrade it") from None
        return list(body["lines"])

    # --- acting on it -------------------------------------------------------------------------

    def cancel(self) -> Job:
        """Ask the job to stop: a queued one never starts, a running one stops within its epoch."""
        try:
            self.data = self._http.json("POST", f"/v1/jobs/{self.id}/cancel", idempotent=True)
        except Conflict:
            # already finished; if a retried request was the one that cancelled it, that is success
            if self.refresh().status != JobStatus.CANCELLED:
                raise
        return self

    def delete(self) -> None:
        """Delete a finished job with its metrics and checkpoints."""
        try:
            self._http.request("DELETE", f"/v1/jobs/{self.id}")
        except NotFound:
            pass  # a retried DELETE whose first try went through

    # --- checkpoints --------------------------------------------------------------------------

    def checkpoints(self) -> list[dict[str, Any]]:
        """Per student: `best` and `final` entries (epoch, score, size, sha256, url) or None."""
        return self._http.json("GET", f"/v1/jobs/{self.id}/checkpoints")["students"]

    def _checkpoint(self, student: int, kind: str) -> dict[str, Any]:
        if kind not in CHECKPOINT_KINDS:
            raise ValueError(f"kind must be one of {CHECKPOINT_KINDS}, got {kind!r}")
        listing = {s["student"]: s for s in self.checkpoints()}
        if student not in listing:
            raise ValueError(f"job {self.id} has students {sorted(listing)}; there is no student {student}")
        entry = listing[student][kind]
        if entry is None:
            raise NotFound(
                404,
                f"job {self.id} has no {kind!r} checkpoint of student {student} yet (status {self.refresh().status}); "
                "'best' appears after the first evaluation, 'final' when the job succeeds",
            )
        return entry

    def _fetch(self, entry: dict[str, Any], sink: Any) -> str:
        """Stream a checkpoint into sink.write; its sha256. A dropped connection starts it over."""
        for attempt in range(1, self._http.retry.attempts + 1):
            digest = hashlib.sha256()
            sink.seek(0)
            sink.truncate()
            try:
                with self._http.stream("GET", entry["url"]) as response:
                    for chunk in response.iter_bytes(1 << 20):
                        digest.update(chunk)
                        sink.write(chunk)
                return digest.hexdigest()
            except (httpx.TransportError, httpx.StreamError) as e:
                if attempt == self._http.retry.attempts:
                    raise ServiceUnavailable(f"download of {entry['url']} kept failing: {e}") from e
                self._http.retry.sleep(self._http.retry.delay(attempt))
        raise AssertionError("unreachable")

    def _verified(self, student: int, kind: str, sink: Any) -> dict[str, Any]:
        """Download into sink until its sha256 matches the listing (a 'best' may be replaced meanwhile)."""
        entry = self._checkpoint(student, kind)
        for _ in range(3):
            sha = self._fetch(entry, sink)
            if sha == entry["sha256"]:
                return entry
            newer = self._checkpoint(student, kind)
            if newer["sha256"] == sha:  # replaced between the listing and the download: the new one is whole
                return newer
            entry = newer
        raise ChecksumMismatch(
            f"checkpoint {entry['url']}: downloaded sha256 {sha} differs from the listed {entry['sha256']}"
        )

    def download(self, student: int = 0, kind: str = "best", path: str | os.PathLike[str] | None = None) -> Path:
        """Save a student's checkpoint (safetensors), verified against the listed sha256; its path.

        `path`: a file, or a folder to put `<job>-student<N>-<kind>.safetensors` in (default: the
        current folder). The file appears only once complete and verified.
        """
        target = Path(path) if path is not None else Path.cwd()
        if target.is_dir():
            target = target / f"{self.id}-student{student}-{kind}.safetensors"
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_name(target.name + ".part")
        try:
            with partial.open("w+b") as f:
                self._verified(student, kind, f)
            partial.replace(target)
        finally:
            partial.unlink(missing_ok=True)
        return target

    def checkpoint_bytes(self, student: int = 0, kind: str = "best") -> bytes:
        """A checkpoint's verified bytes, kept in memory."""
        import io

        buf = io.BytesIO()
        self._verified(student, kind, buf)
        return buf.getvalue()

    def load_student(
        self,
        student: int = 0,
        kind: str = "best",
        *,
        path: str | os.PathLike[str] | None = None,
        device: str = "cpu",
    ) -> Student:
        """Download a checkpoint (verified; kept at `path` if given) and rebuild the student, in eval mode.

        Its `metadata` records the dataset and seed it was trained on: `alignahead.load_graph(student)`.
        """
        from alignahead.checkpoints import load_student

        if path is not None:
            return load_student(self.download(student, kind, path), device=device)
        return load_student(self.checkpoint_bytes(student, kind), device=device)

    def load_graph(self, split: str = "test", **kwargs: Any) -> Graph:
        """The graph this job trains on (see `alignahead.load_graph`)."""
        from alignahead.inference import load_graph

        return load_graph(self.spec, split=split, **kwargs)
