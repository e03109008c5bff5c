"""Logs for machines as well as people: request ids, and JSON lines when `log_format` is 'json'.

Every API request has a request id: the client's `X-Request-ID` when it is a safe token (1 to
`MAX_REQUEST_ID_CHARS` of letters, digits and `._:@/+=-`), otherwise a fresh one. It is echoed in the
answer's `X-Request-ID`, stored with a job it submits, and carried by that job's claim to the worker
that runs it, so one id leads from a client's request to the worker's log lines for the job. An
unsafe id is replaced, not refused: a request id is for tracing, and a proxy's odd format must not
fail a submission.

With `log_format: json` each log record is one JSON object on one line: time, level, logger, message,
and whichever of `FIELDS` are known where it was logged (the API: request_id and, once the key is
verified, tenant; a worker: all four for the lines of the job it runs); an exception's traceback
goes in `exception`. The API sets its handlers here (`configure_api`); the workers in worker.app.
"""

from __future__ import annotations

import json
import logging
import re
import uuid
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the workers import this module too, and never starlette
    from starlette.types import ASGIApp, Message, Receive, Scope, Send

FIELDS = ("job_id", "tenant", "attempt", "request_id")  # what a JSON line says about its job and request
MAX_REQUEST_ID_CHARS = 128
_SAFE_ID = re.compile(rf"[A-Za-z0-9._:@/+=-]{{1,{MAX_REQUEST_ID_CHARS}}}")


def new_request_id() -> str:
    return uuid.uuid4().hex


def request_id_from(header: str | None) -> str:
    """The client's request id if it is a safe token, else a new one."""
    if header is not None and _SAFE_ID.fullmatch(header):
        return header
    return new_request_id()


@dataclass
class LogContext:
    """What a log line says about the job and the request it belongs to (None: not known there)."""

    request_id: str | None = None
    tenant: str | None = None
    job_id: str | None = None
    attempt: int | None = None

    def stamp(self, record: logging.LogRecord) -> None:
        """Set the record's FIELDS that it does not carry yet (`extra=` given at the call wins)."""
        for name in FIELDS:
            value = getattr(self, name)
            if value is not None and getattr(record, name, None) is None:
                setattr(record, name, value)


# the request being answered, in the API (a mutable object: dependencies fill in the tenant)
_request: ContextVar[LogContext | None] = ContextVar("alignahead_request", default=None)


def current_request() -> LogContext | None:
    return _request.get()


class RequestContextFilter(logging.Filter):
    """On the API's handlers: a line logged while a request is answered carries its id (and tenant)."""

    def filter(self, record: logging.LogRecord) -> bool:
        ctx = _request.get()
        if ctx is not None:
            ctx.stamp(record)
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, object] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for name in FIELDS:
            value = getattr(record, name, None)
            if value is not None:
                out[name] = value
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        elif record.stack_info:
            out["stack"] = self.formatStack(record.stack_info)
        return json.dumps(out, default=str)


_FILTER = RequestContextFilter()
# uvicorn's own loggers keep their handlers and do not propagate: their lines are reformatted too
UVICORN_LOGGERS = ("uvicorn", "uvicorn.error", "uvicorn.access")


def json_handlers(handlers: list[logging.Handler], extra_filter: logging.Filter | None = None) -> None:
    """Make these handlers write JSON lines (with the request's fields), once each."""
    formatter = JsonFormatter()
    for handler in handlers:
        handler.setFormatter(formatter)
        for f in (_FILTER, extra_filter):
            if f is not None and f not in handler.filters:
                handler.addFilter(f)


def configure_api(log_format: str) -> None:
    """JSON lines on stderr for the API process (the `alignahead` loggers at INFO, uvicorn's as it
    configured them); with 'text' nothing changes."""
    if log_format != "json":
        return
    root = logging.getLogger()
    if not root.handlers:
        root.addHandler(logging.StreamHandler())
    json_handlers(root.handlers)
    for name in UVICORN_LOGGERS:
        json_handlers(logging.getLogger(name).handlers)
    for name in ("alignahead", "uvicorn"):  # where no level was set (uvicorn run without its log config)
        logger = logging.getLogger(name)
        if logger.level == logging.NOTSET:
            logger.setLevel(logging.INFO)


class RequestIds:
    """ASGI middleware: each request gets its id (see the module's docstring) for its log lines and
    routes (`current_request()`), and its answer says it in `X-Request-ID`."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        header = None
        for name, value in scope["headers"]:
            if name == b"x-request-id":
                header = value.decode("latin-1")
                break
        ctx = LogContext(request_id=request_id_from(header))
        token = _request.set(ctx)

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = [h for h in message.get("headers", ()) if h[0].lower() != b"x-request-id"]
                message["headers"] = [*headers, (b"x-request-id", (ctx.request_id or "").encode())]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            _request.reset(token)
