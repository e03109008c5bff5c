"""The two requests that clients repeat the most, answered without FastAPI's per-request machinery and,
for a moment, from memory: `GET /v1/jobs/{id}` and `GET /v1/jobs/{id}/metrics?since=&student=&limit=`.

Why: through FastAPI a poll costs several milliseconds of CPU (dependency solving, parameter
validation, the hop to the thread pool), most of it not the database's; 50 scripts polling their jobs
would need more CPU than the machine has. How: this ASGI middleware recognises exactly those requests
when their key is one the API verified in the last `auth_cache_seconds` (the same cache) and their
query parameters are known and valid. It answers them with the bytes the routes produce (the same
repository and view functions) and keeps each answer `poll_cache_seconds`, so pollers of one job cost
a few database reads per second between them. Those reads go through `AppContext.reading`: a few
threads of their own, so that polls missing the cache queue on the event loop rather than fill the
thread pool and take the GIL from the requests served there (submissions waited behind them).
Everything else (a key not yet verified, an unknown or invalid parameter, an unknown job, any error)
goes on to FastAPI, which answers as it always does.

Freshness: what workers write shows within `poll_cache_seconds`; this process's own writes (cancel,
delete) drop the job's cached answers at once, so a client reads its own writes. Seqs only grow, so a
slightly older metrics answer never breaks `since=` polling.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING
from urllib.parse import parse_qsl

from sqlalchemy.orm import Session
from starlette.types import ASGIApp, Receive, Scope, Send

from service.api import views
from service.api.auth import bearer_key
from service.api.schemas import DEFAULT_METRIC_ROWS, MAX_METRIC_ROWS, MAX_SEQ, MAX_STUDENT
from service.core import repository as repo

if TYPE_CHECKING:
    from service.api.context import AppContext

_PATH = re.compile(r"^/v1/jobs/([^/]{1,64})(/metrics)?$")
MAX_ENTRIES = 20_000  # a bound on memory; the cache starts afresh when it is reached
_HEADERS = [(b"content-type", b"application/json")]


@dataclass
class PollCache:
    """(tenant, job, what) -> (expiry, JSON body); `forget(job)` drops a job's answers."""

    ttl: float
    _entries: dict[tuple, tuple[float, bytes]] = field(default_factory=dict)

    def get(self, key: tuple) -> bytes | None:
        hit = self._entries.get(key)
        if hit is None or hit[0] < time.monotonic():
            return None
        return hit[1]

    def put(self, key: tuple, body: bytes) -> None:
        if self.ttl <= 0:
            return
        if len(self._entries) >= MAX_ENTRIES:
            self._entries.clear()
        self._entries[key] = (time.monotonic() + self.ttl, body)

    def forget(self, job_id: str) -> None:
        for key in [k for k in self._entries if k[1] == job_id]:
            self._entries.pop(key, None)


def _int(text: str, low: int, high: int) -> int | None:
    """A plain decimal integer within [low, high]; None for anything FastAPI would have to judge."""
    if not (text.isascii() and text.isdigit()) or len(text) > 19:
        return None
    value = int(text)
    return value if low <= value <= high else None


def _metric_params(query: bytes) -> tuple[int, int | None, int] | None:
    """(since, student, limit) when every parameter is known, given once and valid; else None."""
    seen: dict[str, int] = {}
    for name, text in parse_qsl(query.decode("latin-1"), keep_blank_values=True):
        bounds = {"since": (0, MAX_SEQ), "student": (0, MAX_STUDENT), "limit": (1, MAX_METRIC_ROWS)}.get(name)
        if bounds is None or name in seen:
            return None
        value = _int(text, *bounds)
        if value is None:
            return None
        seen[name] = value
    return seen.get("since", 0), seen.get("student"), seen.get("limit", DEFAULT_METRIC_ROWS)


class PollingFastPath:
    def __init__(self, app: ASGIApp, context: AppContext) -> None:
        self.app = app
        self.ctx = context

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "GET":
            match = _PATH.match(scope["path"])
            if match is not None:
                body = await self._answer(scope, match.group(1), match.group(2) is not None)
                if body is not None:
                    headers = [*_HEADERS, (b"content-length", str(len(body)).encode())]
                    await send({"type": "http.response.start", "status": 200, "headers": headers})
                    await send({"type": "http.response.body", "body": body})
                    return
        await self.app(scope, receive, send)

    async def _answer(self, scope: Scope, job_id: str, metrics: bool) -> bytes | None:
        """The answer's body, or None to leave the request to FastAPI."""
        tenant = self._tenant(scope)
        if tenant is None:
            return None
        query = scope.get("query_string", b"")
        if metrics:
            params = _metric_params(query)
            if params is None:
                return None
            key: tuple = (tenant, job_id, params)
            read: Callable[[Session], bytes] = lambda s: _metrics(s, tenant, job_id, *params)  # noqa: E731
        else:
            if query:
                return None
            key, read = (tenant, job_id, None), lambda s: _job(s, tenant, job_id)
        cache = self.ctx.poll_cache
        body = cache.get(key)
        if body is None:
            try:
                body = await self.ctx.reading(read)  # on PostgreSQL without leaving the event loop
            except Exception:  # unknown job, database trouble: FastAPI answers it, errors and all
                return None
            cache.put(key, body)
        return body

    def _tenant(self, scope: Scope) -> str | None:
        ctx = self.ctx
        if ctx.settings.auth_disabled:
            return ctx.local_tenant_id or None
        for name, value in scope["headers"]:
            if name == b"authorization":
                key = bearer_key(value.decode("latin-1"))
                return ctx.key_cache.get_key(ctx.secret, key) if key else None
        return None


def _job(s: Session, tenant: str, job_id: str) -> bytes:
    out = views.job_detail(repo.get_job(s, tenant, job_id))
    return out.__pydantic_serializer__.to_json(out)


def _metrics(s: Session, tenant: str, job_id: str, since: int, student: int | None, limit: int) -> bytes:
    rows = repo.list_metrics(s, tenant, job_id, since=since, student=student, limit=limit)
    out = views.metric_page(job_id, rows, since)
    return out.__pydantic_serializer__.to_json(out)
