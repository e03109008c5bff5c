"""`Client`: submit, find and follow jobs on an alignahead service, and upload datasets."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import yaml

from alignahead.client.jobs import Job
from alignahead.client.studies import Study
from alignahead.client.transport import Http, RetryPolicy
from alignahead.spec import JobSpec

SpecLike = JobSpec | dict[str, Any] | str | os.PathLike[str]


def spec_body(spec: SpecLike, name: str | None = None) -> dict[str, Any]:
    """The JSON body of a submission: a JobSpec, a dict, or a YAML/JSON file's path.

    Dicts and files are sent as they are, so that the service (not a possibly older client) judges
    them and its message names the field to fix.
    """
    if isinstance(spec, JobSpec):
        body = spec.model_dump(mode="json", exclude_unset=True)
    elif isinstance(spec, dict):
        body = dict(spec)
    elif isinstance(spec, str | os.PathLike):
        path = Path(spec)
        if not path.is_file():
            raise FileNotFoundError(f"no spec file {str(path)!r}; pass a path to a YAML or JSON job spec, or a dict")
        try:
            body = yaml.safe_load(path.read_text())
        except yaml.YAMLError as e:
            raise ValueError(f"cannot read spec {path}: {e}") from e
        if not isinstance(body, dict):
            raise ValueError(f"spec {path} must hold a mapping (sections dataset, students, ...), not {body!r:.80}")
    else:
        raise TypeError(f"spec must be a JobSpec, a dict or a path, not {type(spec).__name__}")
    if name is not None:
        body["name"] = name
    return body


class Client:
    """An alignahead service at `url` (default $ALIGNAHEAD_URL, else http://127.0.0.1:8000), sending
    `api_key` (default $ALIGNAHEAD_API_KEY) as `Authorization: Bearer`.

    Connection errors, 5xx and 429 are retried with exponential backoff (honouring Retry-After);
    other 4xx raise an APIError subclass whose message is the server's.
    """

    def __init__(
        self,
        url: str | None = None,
        api_key: str | None = None,
        *,
        timeout: float = 30.0,
        retry: RetryPolicy | None = None,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self._http = Http(url, api_key, timeout=timeout, retry=retry, transport=transport)

    @property
    def url(self) -> str:
        return self._http.url

    def __repr__(self) -> str:
        return f"<alignahead.Client {self.url}>"

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- jobs ---------------------------------------------------------------------------------

    def submit(self, spec: SpecLike, *, name: str | None = None) -> Job:
        """Submit a job spec (a JobSpec, a dict, or a YAML/JSON file); the queued Job.

        The request carries an Idempotency-Key, so a retry after a lost answer never makes a second job.
        """
        body = spec_body(spec, name)
        headers = {"Idempotency-Key": uuid.uuid4().hex}
        data = self._http.json("POST", "/v1/jobs", json=body, headers=headers, idempotent=True)
        return Job(self._http, data)

    def job(self, job_id: str) -> Job:
        """A job by its id or a unique start of it (6 characters or more; the service resolves it)."""
        return Job(self._http, self._http.json("GET", f"/v1/jobs/{job_id}"))

    def jobs(
        self,
        status: str | None = None,
        name: str | None = None,
        tag: str | list[str] | None = None,
        *,
        page_size: int = 100,
    ) -> Iterator[Job]:
        """Jobs newest first, every page of them; filtered by status, by exact name and by tag (a list:
        jobs carrying every one of them)."""
        params: dict[str, Any] = {"limit": page_size}
        if status is not None:
            params["status"] = status
        if name is not None:
            params["name"] = name
        if tag:
            params["tag"] = [tag] if isinstance(tag, str) else list(tag)
        cursor: str | None = None
        while True:
            page = self._http.json("GET", "/v1/jobs", params={**params, **({"cursor": cursor} if cursor else {})})
            for data in page["jobs"]:
                if name is None or data.get("name") == name:  # also right on a service that ignores ?name=
                    yield Job(self._http, data)
            cursor = page.get("next_cursor")
            if not cursor:
                return

    # --- studies ------------------------------------------------------------------------------

    def submit_study(
        self,
        spec: SpecLike,
        *,
        seeds: int | list[int] = 3,
        axes: dict[str, list[Any]] | None = None,
        name: str | None = None,
    ) -> Study:
        """Run a base spec for every seed (a count n: seeds 0..n-1) and every combination of the axes
        (dotted spec paths to value lists, e.g. {"distillation.strategy": ["none", "alignahead"]}).

        The service checks every combination first and refuses the whole study (ValidationFailed naming
        the path or combination) if one fails; else it queues one ordinary job per combination and seed.
        """
        body = {"spec": spec_body(spec), "seeds": seeds, "axes": axes or {}}
        if name is not None:
            body["name"] = name
        return Study(self._http, self._http.json("POST", "/v1/studies", json=body, idempotent=False))

    def study(self, study_id: str) -> Study:
        """A study by its id or a unique start of it (6 characters or more)."""
        return Study(self._http, self._http.json("GET", f"/v1/studies/{study_id}"))

    def studies(self, *, page_size: int = 100) -> Iterator[Study]:
        """Studies newest first (summaries: `refresh()` or `table()` fetch the rest)."""
        cursor: str | None = None
        while True:
            params: dict[str, Any] = {"limit": page_size, **({"cursor": cursor} if cursor else {})}
            page = self._http.json("GET", "/v1/studies", params=params)
            for data in page["studies"]:
                yield Study(self._http, data)
            cursor = page.get("next_cursor")
            if not cursor:
                return

    # --- datasets -----------------------------------------------------------------------------

    def upload_dataset(self, path: str | os.PathLike[str]) -> dict[str, Any]:
        """Upload an npz graph; the stored upload, whose `dataset_spec` is a job spec's `dataset` section."""
        path = Path(path)
        data = path.read_bytes()
        files = {"file": (path.name, data, "application/octet-stream")}
        return self._http.json("POST", "/v1/datasets", files=files, idempotent=False)

    def datasets(self) -> dict[str, Any]:
        """The first page of uploads and the built-in dataset names (`GET /v1/datasets`)."""
        return self._http.json("GET", "/v1/datasets")
