"""HTTP with the service's conventions: bearer key, retries with backoff, errors from the server's body.

Retried: connection failures, 5xx (but 501) and 429, waiting what `Retry-After` says when the server
says it, else an exponential backoff with jitter. A request that is not idempotent (an upload) is
retried only where the server cannot have acted on it: refused connections, 429 and 503.
"""

from __future__ import annotations

import os
import random
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import httpx

from alignahead.client.errors import (
    ServiceUnavailable,
    error_from_response,
    retry_after_seconds,
)

DEFAULT_URL = "http://127.0.0.1:8000"
IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE"})
# transport errors after which the request surely never reached the application
_NOT_SENT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how long to retry; `sleep` is injectable so tests can record the waits."""

    attempts: int = 6  # tries in all, the first included
    backoff: float = 0.5  # seconds before the first retry; doubled each time
    max_backoff: float = 30.0
    max_retry_after: float = 300.0  # longest Retry-After honoured
    sleep: Callable[[float], None] = field(default=time.sleep, compare=False)

    def delay(self, retry: int, retry_after: float | None = None) -> float:
        """Seconds before retry number `retry` (1-based): Retry-After when given, else backoff with jitter."""
        if retry_after is not None:
            return min(retry_after, self.max_retry_after)
        base = min(self.max_backoff, self.backoff * 2 ** (retry - 1))
        return base * (0.5 + random.random() / 2)


def _retryable_status(code: int, idempotent: bool) -> bool:
    if code in (429, 503):
        return True
    return idempotent and code >= 500 and code != 501


class Http:
    """One httpx.Client bound to a service URL and key."""

    def __init__(
        self,
        url: str | None = None,
        api_key: str | None = None,
        *,
        timeout: float = 30.0,
        retry: RetryPolicy | None = None,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.url = (url or os.environ.get("ALIGNAHEAD_URL") or DEFAULT_URL).rstrip("/")
        key = api_key if api_key is not None else os.environ.get("ALIGNAHEAD_API_KEY")
        self.retry = retry or RetryPolicy()
        self.events_supported = True  # set False once the service shows it has no event stream
        from alignahead import __version__

        headers = {"User-Agent": f"alignahead-client/{__version__}"}
        if key:
            headers["Authorization"] = f"Bearer {key}"
        self.client = httpx.Client(base_url=self.url, headers=headers, timeout=timeout, transport=transport)

    def close(self) -> None:
        self.client.close()

    def request(self, method: str, path: str, *, idempotent: bool | None = None, **kwargs: Any) -> httpx.Response:
        """Send with retries; return a 2xx/3xx response, raise the APIError of a 4xx/5xx."""
        with self.stream(method, path, idempotent=idempotent, **kwargs) as response:
            response.read()
            return response

    @contextmanager
    def stream(
        self, method: str, path: str, *, idempotent: bool | None = None, **kwargs: Any
    ) -> Iterator[httpx.Response]:
        """Open a streamed response, retrying until its headers say success; the body is the caller's.

        Errors raised while the body is read (a dropped connection) are the caller's to handle, since
        only it knows where to resume.
        """
        method = method.upper()
        safe = method in IDEMPOTENT_METHODS if idempotent is None else idempotent
        last: BaseException | None = None
        for attempt in range(1, self.retry.attempts + 1):
            wait: float | None = None
            try:
                response = self.client.send(self.client.build_request(method, path, **kwargs), stream=True)
            except httpx.TransportError as e:
                if not (safe or isinstance(e, _NOT_SENT)):
                    reason = f"{method} {path} failed: {type(e).__name__}: {e}"
                    raise ServiceUnavailable(f"{method} {self.url}{path} failed: {type(e).__name__}: {e}",
                                             url=self.url, reason=reason) from e  # fmt: skip
                last = e
            else:
                if response.status_code < 400:
                    try:
                        yield response
                    finally:
                        response.close()
                    return
                response.read()
                response.close()
                error = error_from_response(response)
                if not _retryable_status(response.status_code, safe):
                    raise error
                last, wait = error, retry_after_seconds(response)
            if attempt < self.retry.attempts:
                self.retry.sleep(self.retry.delay(attempt, wait))
        if isinstance(last, httpx.TransportError):
            reason = f"{type(last).__name__}: {last}; {self.retry.attempts} tries"
            raise ServiceUnavailable(
                f"cannot reach the alignahead service at {self.url} ({reason}); is it running? "
                "Set ALIGNAHEAD_URL or pass url=",
                url=self.url,
                reason=reason,
            ) from last
        assert last is not None
        raise last

    def json(self, method: str, path: str, **kwargs: Any) -> Any:
        return self.request(method, path, **kwargs).json()
