"""Errors the service raises and the API turns into 4xx/5xx answers with a readable message.

Every error answer has one shape (service.api.schemas.ErrorOut): `detail`, one readable sentence, and
`errors`, a list of {loc, msg, type} (empty unless a field is at fault).
"""

from __future__ import annotations

from collections.abc import Sequence


class ServiceError(Exception):
    status_code = 400
    headers: dict[str, str] | None = None

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class Unauthorized(ServiceError):
    status_code = 401
    headers = {"WWW-Authenticate": "Bearer"}


class Forbidden(ServiceError):
    status_code = 403


class NotFound(ServiceError):
    status_code = 404


class Conflict(ServiceError):
    status_code = 409


class TooLarge(ServiceError):
    status_code = 413


class TooMany(ServiceError):
    """A per-tenant limit; `retry_after` seconds is when trying again can succeed."""

    status_code = 429

    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(message)
        self.headers = {"Retry-After": str(max(1, retry_after))}


class Unavailable(ServiceError):
    status_code = 503


class Invalid(ServiceError):
    """A request that parsed but cannot be accepted; `loc` points at the field, as FastAPI's 422s do."""

    status_code = 422

    def __init__(self, loc: Sequence[str | int], message: str, kind: str = "value_error") -> None:
        super().__init__(message)
        self.loc = list(loc)
        self.kind = kind
