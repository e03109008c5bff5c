"""Errors the persistence layer raises and the API turns into 4xx answers with a readable message."""

from __future__ import annotations

from collections.abc import Sequence


class ServiceError(Exception):
    status_code = 400

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class NotFound(ServiceError):
    status_code = 404


class Conflict(ServiceError):
    status_code = 409


class TooLarge(ServiceError):
    status_code = 413


class Invalid(ServiceError):
    """A request that parsed but cannot be accepted; `loc` points at the field, as FastAPI's 422s do."""

    status_code = 422

    def __init__(self, loc: Sequence[str | int], message: str) -> None:
        super().__init__(message)
        self.loc = list(loc)
