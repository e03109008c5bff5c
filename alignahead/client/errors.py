"""Exceptions of the client: one per kind of answer a caller may want to handle differently.

Every 4xx carries the server's own message. The service has used three error bodies over time and the
client reads all of them:

- ``{"detail": "<sentence>", "errors": [{"loc": [...], "msg": "...", "type": "..."}]}`` (the one shape);
- ``{"detail": [{"loc": ..., "msg": ..., "type": ...}], "message": "<summary>"}`` (older 422s);
- ``{"detail": "<sentence>"}`` and FastAPI's own ``{"detail": [...]}``.
"""

from __future__ import annotations

from typing import Any

import httpx


class AlignaheadError(Exception):
    """Base of every error the client raises."""


class ServiceUnavailable(AlignaheadError):
    """The service could not be reached (connection refused, timeouts) even after retrying; `url` is
    where it was looked for (None where unknown), `reason` what went wrong."""

    def __init__(self, message: str, *, url: str | None = None, reason: str | None = None) -> None:
        super().__init__(message)
        self.url = url
        self.reason = reason or message


class APIError(AlignaheadError):
    """The service answered with an error status; `message` is its explanation, `errors` its field list."""

    def __init__(
        self, status_code: int, message: str, errors: list[dict[str, Any]] | None = None, body: Any = None
    ) -> None:
        self.status_code = status_code
        self.message = message
        self.errors = errors or []
        self.body = body
        super().__init__(self._text())

    def _text(self) -> str:
        """The message, then one line per field unless the message already says every one of them."""
        text = f"{self.message} (HTTP {self.status_code})"
        if all(str(e.get("msg", "")) in self.message for e in self.errors):
            return text
        return "\n".join([text, *(f"  {where(e)}: {e.get('msg', '')}" for e in self.errors)])


class BadRequest(APIError):
    """400 and other 4xx without a class of their own."""


class Unauthorized(APIError):
    """401/403: a missing, wrong or revoked API key (set ALIGNAHEAD_API_KEY or pass api_key=)."""


class NotFound(APIError):
    """404: no such job, checkpoint or upload (or one that belongs to another tenant)."""


class Conflict(APIError):
    """409: the job's status does not allow it (cancel a finished job, delete a running one)."""


class TooLarge(APIError):
    """413: an upload above the service's size limit."""


class ValidationFailed(APIError):
    """422: the request (usually the job spec) is invalid; `errors` names each field and what to fix."""


class RateLimited(APIError):
    """429 that outlasted the retries; `retry_after` is the server's last advice in seconds."""

    def __init__(self, *args: Any, retry_after: float | None = None, **kwargs: Any) -> None:
        self.retry_after = retry_after
        super().__init__(*args, **kwargs)


class ServerError(APIError):
    """5xx that outlasted the retries."""


class JobFailed(AlignaheadError):
    """`Job.wait()` saw the job end `failed`; the job (with its `error`) is attached."""

    def __init__(self, job: Any) -> None:
        self.job = job
        super().__init__(f"job {job.id} failed: {job.error or 'no reason recorded'}")


class ChecksumMismatch(AlignaheadError):
    """A downloaded checkpoint's sha256 differs from the listing's, however often it was fetched."""


_CLASSES: dict[int, type[APIError]] = {
    401: Unauthorized,
    403: Unauthorized,
    404: NotFound,
    409: Conflict,
    413: TooLarge,
    422: ValidationFailed,
}


def where(error: dict[str, Any]) -> str:
    """A field error's location as `dataset.synthetic.num_nodes` (the request part 'body' left out)."""
    return ".".join(str(p) for p in error.get("loc", []) if p != "body") or "(request)"


def _summary(errors: list[dict[str, Any]]) -> str:
    return "; ".join(f"{where(e)}: {e.get('msg', '')}" for e in errors)


def parse_error_body(response: httpx.Response) -> tuple[str, list[dict[str, Any]], Any]:
    """(message, field errors, decoded body) of an error response, whichever shape it has."""
    try:
        body: Any = response.json()
    except ValueError:
        text = response.text.strip()
        return (text[:500] or response.reason_phrase or f"HTTP {response.status_code}"), [], text
    if not isinstance(body, dict):
        return str(body)[:500], [], body
    detail = body.get("detail")
    errors = body.get("errors")
    if not isinstance(errors, list):
        errors = detail if isinstance(detail, list) else []
    errors = [e for e in errors if isinstance(e, dict)]
    if isinstance(detail, str) and detail:
        message = detail
    elif isinstance(body.get("message"), str) and body["message"]:
        message = body["message"]
    elif errors:
        message = _summary(errors)
    else:
        message = response.reason_phrase or f"HTTP {response.status_code}"
    return message, errors, body


def error_from_response(response: httpx.Response) -> APIError:
    message, errors, body = parse_error_body(response)
    code = response.status_code
    if code == 429:
        return RateLimited(code, message, errors, body, retry_after=retry_after_seconds(response))
    if code >= 500:
        return ServerError(code, message, errors, body)
    return _CLASSES.get(code, BadRequest)(code, message, errors, body)


def retry_after_seconds(response: httpx.Response) -> float | None:
    """Retry-After as seconds: either delta-seconds or an HTTP date; None when absent or unreadable."""
    value = response.headers.get("retry-after")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    from email.utils import parsedate_to_datetime

    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    from datetime import UTC, datetime

    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - datetime.now(UTC)).total_seconds())
