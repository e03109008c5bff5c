"""One shape for every error answer: {"detail": "<one readable sentence>", "errors": [{loc, msg, type}]}.

`detail` says what is wrong and how to fix it; `errors` lists the fields at fault (validation) and is
empty otherwise. FastAPI's own errors (422 validation, 404 unknown route, 405) are reshaped to match.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from service.errors import Invalid, ServiceError

log = logging.getLogger("alignahead.service")


def error_json(status_code: int, detail: str, errors: list[dict[str, Any]] | None = None,
               headers: dict[str, str] | None = None) -> JSONResponse:  # fmt: skip
    return JSONResponse({"detail": detail, "errors": errors or []}, status_code=status_code, headers=headers)


def _loc(loc: list[Any]) -> str:
    return ".".join(str(p) for p in loc)


def error_response(exc: ServiceError) -> JSONResponse:
    if isinstance(exc, Invalid):
        errors = [{"loc": exc.loc, "msg": exc.message, "type": exc.kind}]
        return error_json(exc.status_code, f"{_loc(exc.loc)}: {exc.message}", errors, exc.headers)
    return error_json(exc.status_code, exc.message, [], exc.headers)


async def service_error(_request: Request, exc: ServiceError) -> JSONResponse:
    return error_response(exc)


async def validation_error(_request: Request, exc: RequestValidationError) -> JSONResponse:
    errors = []
    for e in exc.errors():
        msg = str(e.get("msg", ""))
        loc = list(e.get("loc", ()))
        if e.get("type") == "extra_forbidden":
            msg = f"unknown field {loc[-1]!r}; remove it or check its spelling (see the JobSpec schema)"
        elif e.get("type") == "json_invalid":
            msg = f"the body is not valid JSON ({e.get('ctx', {}).get('error', msg)})"
        # the offending input is left out: it may be a whole (large) body
        errors.append({"loc": loc, "msg": msg, "type": str(e.get("type", "value_error"))})
    detail = "; ".join(f"{_loc(e['loc'])}: {e['msg']}" for e in errors) or "the request is not valid"
    return error_json(422, detail, errors)


async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
    headers = dict(exc.headers) if exc.headers else None
    if exc.status_code == 400:  # FastAPI could not parse the body (e.g. an integer of 5,000 digits)
        cause = exc.__cause__ or exc.__context__
        why = f" ({type(cause).__name__}: {cause})" if cause else ""
        msg = f"the body could not be parsed as JSON{why}"
        return error_json(422, f"body: {msg}", [{"loc": ["body"], "msg": msg, "type": "json_invalid"}])
    if exc.status_code == 404 and exc.detail == "Not Found":
        detail = f"no such endpoint: {request.method} {request.url.path}; the API lives under /v1 (see /docs)"
    elif exc.status_code == 405:
        detail = f"{request.method} is not allowed on {request.url.path}; see /docs for its methods"
    else:
        detail = str(exc.detail)
    return error_json(exc.status_code, detail, [], headers)


async def unexpected_error(request: Request, exc: Exception) -> JSONResponse:
    log.exception("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    return error_json(500, "internal error; it has been logged. Retry later, or tell the operator if it persists")
