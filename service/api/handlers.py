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
from pydantic import BaseModel
from starlette.exceptions import HTTPException
from starlette.routing import Match

from alignahead.spec import error_message, submodel
from service.core.errors import Invalid, ServiceError

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


def _body_model(request: Request) -> type[BaseModel] | None:
    """The model of the route's body (JobSpec for POST /v1/jobs), for naming the fields near a typo."""
    field = getattr(request.scope.get("route"), "body_field", None)
    return submodel(field.field_info.annotation) if field is not None else None


async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    errors = []
    body_model = _body_model(request)
    for e in exc.errors():
        loc = list(e.get("loc", ()))
        in_body = bool(loc) and loc[0] == "body"
        msg = error_message({**e, "loc": loc[1:] if in_body else loc}, body_model if in_body else None)
        if e.get("type") == "json_invalid":
            msg = f"the body is not valid JSON ({e.get('ctx', {}).get('error', msg)})"
        # the offending input is left out: it may be a whole (large) body
        errors.append({"loc": loc, "msg": msg, "type": str(e.get("type", "value_error"))})
    detail = "; ".join(f"{_loc(e['loc'])}: {e['msg']}" for e in errors) or "the request is not valid"
    return error_json(422, detail, errors)


METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")


def allowed_methods(request: Request) -> list[str]:
    """Every method some route takes at this path, found by asking the router about each: Starlette's
    405 lists only those of the first route whose path matched (GET of `GET /v1/jobs/{id}`, not the
    DELETE beside it)."""
    routes = request.app.router.routes
    return [m for m in METHODS if any(r.matches({**request.scope, "method": m})[0] is Match.FULL for r in routes)]


async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
    headers = dict(exc.headers) if exc.headers else None
    if exc.status_code == 400:  # FastAPI could not parse the body (e.g. an integer of 5,000 digits)
        cause = exc.__cause__ or exc.__context__
        if isinstance(cause, ServiceError):  # a guard refused the body as it streamed in (service.api.guards)
            return error_response(cause)
        why = f" ({type(cause).__name__}: {cause})" if cause else ""
        msg = f"the body could not be parsed as JSON{why}"
        return error_json(422, f"body: {msg}", [{"loc": ["body"], "msg": msg, "type": "json_invalid"}])
    if exc.status_code == 404 and exc.detail == "Not Found":
        detail = f"no such endpoint: {request.method} {request.url.path}; the API lives under /v1 (see /docs)"
    elif exc.status_code == 405:
        allowed = allowed_methods(request)
        headers = {**(headers or {}), "Allow": ", ".join(allowed)}
        detail = f"{request.method} is not allowed on {request.url.path}; it takes {', '.join(allowed)} (see /docs)"
    else:
        detail = str(exc.detail)
    return error_json(exc.status_code, detail, [], headers)


def document_errors(openapi: dict[str, Any]) -> dict[str, Any]:
    """Every error answer is JSON: FastAPI documents an operation's error models under its own media
    type (text/event-stream for the event stream), so those move to application/json."""
    for operations in openapi.get("paths", {}).values():
        for operation in operations.values():
            for code, response in operation.get("responses", {}).items():
                content = response.get("content")
                if code[0] in "45" and content and "application/json" not in content:
                    response["content"] = {"application/json": next(iter(content.values()))}
    return openapi


async def unexpected_error(request: Request, exc: Exception) -> JSONResponse:
    log.exception("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    return error_json(500, "internal error; it has been logged. Retry later, or tell the operator if it persists")
