"""Request guards that run before routing, one rule for each class of input, whatever route it is for:

- text: no NUL character anywhere in the URL path, the query, a header or a JSON body. Every string
  the database stores or compares (ids, names, tags, cursors, keys) arrives by one of those, no field
  accepts NUL, and PostgreSQL cannot hold one (SQLite can), so it is refused here for every route at
  once (422 naming where), the polling fast path and fields added later included;
- numbers: no NaN or Infinity in a JSON body. Python's parser reads them, but they are not JSON and
  PostgreSQL refuses them in a JSON column (a study's base spec is stored as sent);
- bodies: bounded before anything parses them. FastAPI reads the whole body of any content type (and
  parses a body without one as JSON), so every body but a multipart upload is held to
  ALIGNAHEAD_MAX_JSON_BYTES, whitespace included, and to ALIGNAHEAD_MAX_JSON_DEPTH; a multipart body
  to ALIGNAHEAD_MAX_UPLOAD_BYTES, counted as it streams. Media types compare case-insensitively, as
  HTTP says (`Application/JSON` is JSON);
- origins: state-changing requests from foreign browser origins are refused. A browser may send a
  cross-origin multipart POST without asking first (a "simple" request), so CORS alone does not stop
  a page elsewhere from uploading or submitting in a logged-in user's name: any unsafe request whose
  Origin is neither the API's own nor listed in ALIGNAHEAD_CORS_ORIGINS is a 403. Clients that are
  not browsers send no Origin and are not affected.

`document` adds these answers to the OpenAPI document, so that it lists what the guards may say.
"""

from __future__ import annotations

import json
import math
import re
from array import array
from collections.abc import Callable
from itertools import accumulate
from typing import Any
from urllib.parse import parse_qsl

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.api.handlers import error_response
from service.core.errors import Forbidden, Invalid, ServiceError, TooLarge
from service.core.settings import Settings

UNSAFE = {"POST", "PUT", "PATCH", "DELETE"}
MULTIPART = "multipart/form-data"
MULTIPART_SLACK = 64 * 1024  # boundaries and part headers around an uploaded file
_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"')
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")
_SIGNS = bytes.maketrans(b"[]{}", b"\x01\xff\x01\xff")
_NUL_ESCAPE = re.compile(rb"(?<!\\)(?:\\\\)*\\u0000")  # \u0000 itself, not an escaped backslash before 'u0000'
_NON_FINITE = re.compile(rb"NaN|Infinity")  # Python's json reads them; they are not JSON, and PostgreSQL refuses them
NUL = "\x00"


def _skeleton(body: bytes) -> bytes:
    """A JSON text with every string emptied: what is left is structure, numbers and literals."""
    return _STRING.sub(b'""', body)


def json_depth(skeleton: bytes) -> int:
    """The deepest nesting of arrays and objects in a JSON text's skeleton, in C-speed passes."""
    brackets = skeleton.translate(None, _NOT_BRACKETS).translate(_SIGNS)
    return max(accumulate(array("b", brackets)), default=0)


def media_type(headers: Headers) -> str:
    """The Content-Type without its parameters, lower case ('' when there is none)."""
    return headers.get("content-type", "").split(";")[0].strip().lower()


def too_large_upload(max_bytes: int) -> TooLarge:
    return TooLarge(
        f"upload exceeds the {max_bytes} byte limit (ALIGNAHEAD_MAX_UPLOAD_BYTES); "
        "shrink the dataset (sparse features help) or ask the operator to raise the limit"
    )


def _nul_refusal(loc: list[str | int], where: str) -> Invalid:
    return Invalid(loc, f"{where} contains a NUL character (\\u0000 or %00); no id, name or value may hold one",
                   kind="string_nul")  # fmt: skip


def check_text(loc: list[str | int], text: str, where: str) -> None:
    """The one rule for text bound for the database: it holds no NUL character."""
    if NUL in text:
        raise _nul_refusal(loc, where)


def _first(value: Any, loc: list[str | int], bad: Callable[[Any], bool]) -> list[str | int] | None:
    """Where in a parsed JSON value the first `bad` key or value is, or None."""
    if bad(value):
        return loc
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for key, item in items:
        if bad(key):
            return loc
        found = _first(item, [*loc, key], bad)
        if found is not None:
            return found
    return None


def _has_nul(value: Any) -> bool:
    return isinstance(value, str) and NUL in value


def _non_finite(value: Any) -> bool:
    return isinstance(value, float) and not math.isfinite(value)


def check_url_and_headers(scope: Scope) -> None:
    check_text(["path"], scope["path"], "the URL path")
    query = scope.get("query_string", b"")
    if b"%00" in query or b"\x00" in query:
        for name, value in parse_qsl(query.decode("latin-1"), keep_blank_values=True):
            check_text(["query", name.replace(NUL, "")], name + value, f"query parameter {name.replace(NUL, '')!r}")
    for name, value in scope["headers"]:
        if b"\x00" in value:
            header = name.decode("latin-1")
            raise _nul_refusal(["header", header], f"header {header!r}")


def check_json_text(body: bytes, skeleton: bytes) -> None:
    """What a JSON body may not hold, named by its field: a NUL (only the escape \\u0000 can be one, a raw
    NUL is not JSON), and NaN or Infinity, which Python reads but JSON and PostgreSQL do not. A study's
    base spec is stored as sent, where an axis overrides a value no model ever validates."""
    nul, non_finite = _NUL_ESCAPE.search(body), _NON_FINITE.search(skeleton)
    if nul is None and non_finite is None:
        return
    try:
        value = json.loads(body)
    except (ValueError, RecursionError):
        return  # not JSON: the route says so
    if nul is not None and (loc := _first(value, ["body"], _has_nul)) is not None:
        raise _nul_refusal(loc, ".".join(map(str, loc)))
    if non_finite is not None and (loc := _first(value, ["body"], _non_finite)) is not None:
        raise Invalid(loc, "NaN and Infinity are not JSON numbers (RFC 8259); send a finite number",
                      kind="finite_number")  # fmt: skip


class Guards:
    def __init__(self, app: ASGIApp, settings: Settings) -> None:
        self.app = app
        self.settings = settings
        self.allowed = set(settings.cors_origins)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        try:
            check_url_and_headers(scope)
            if scope["method"] in UNSAFE:
                headers = Headers(scope=scope)
                self._check_origin(scope, headers)
                if media_type(headers) == MULTIPART:
                    receive = self._bounded_stream(headers, receive)
                else:
                    body = await self._body(headers, receive)
                    receive = _replay(body, receive)
        except ServiceError as e:
            await error_response(e)(scope, receive, send)
            return
        await self.app(scope, receive, send)

    def _check_origin(self, scope: Scope, headers: Headers) -> None:
        origin = headers.get("origin")
        if origin is None:  # not a browser, or a same-origin GET-like navigation
            return
        own = f"{scope.get('scheme', 'http')}://{headers.get('host', '')}"
        if origin.rstrip("/") == own or origin.rstrip("/") in self.allowed:
            return
        raise Forbidden(
            f"a {scope['method']} from the web origin {origin!r} is refused: only the API's own origin and those "
            "in ALIGNAHEAD_CORS_ORIGINS may change anything from a browser"
        )

    async def _body(self, headers: Headers, receive: Receive) -> bytes:
        """The whole body, at most max_json_bytes (every byte counts, whitespace too), nested at most
        max_json_depth deep, and holding neither NUL nor NaN (check_json_text)."""
        limit = self.settings.max_json_bytes
        too_large = TooLarge(
            f"the JSON body is larger than {limit} bytes (ALIGNAHEAD_MAX_JSON_BYTES); a job spec is a few hundred"
        )
        if _declared_length(headers) > limit:
            raise too_large
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                break
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                raise too_large
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        skeleton = _skeleton(body)
        depth = json_depth(skeleton)
        if depth > self.settings.max_json_depth:
            raise Invalid(
                ["body"],
                f"the JSON body nests {depth} levels deep, deeper than the {self.settings.max_json_depth} accepted "
                "(ALIGNAHEAD_MAX_JSON_DEPTH); a job spec nests at most 4",
                kind="json_too_deep",
            )
        check_json_text(body, skeleton)
        return body

    def _bounded_stream(self, headers: Headers, receive: Receive) -> Receive:
        """The connection's messages, refused (413) once the body passes the upload cap: nothing reads
        or spools more than that, whichever route the multipart body was sent to."""
        limit = self.settings.max_upload_bytes + MULTIPART_SLACK
        if _declared_length(headers) > limit:
            raise too_large_upload(self.settings.max_upload_bytes)
        received = 0

        async def bounded() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise too_large_upload(self.settings.max_upload_bytes)
            return message

        return bounded


def _declared_length(headers: Headers) -> int:
    length = headers.get("content-length", "")
    return int(length) if length.isascii() and length.isdigit() and len(length) < 30 else 0


def _replay(body: bytes, original: Receive) -> Receive:
    """The body read once, then the connection's own messages (a disconnect) as before."""
    sent = False

    async def receive() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await original()

    return receive


_ERROR = {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorOut"}}}
REFUSALS = {
    "403": "A browser request from a web origin that is neither the API's own nor in ALIGNAHEAD_CORS_ORIGINS.",
    "413": "The body is larger than ALIGNAHEAD_MAX_JSON_BYTES (ALIGNAHEAD_MAX_UPLOAD_BYTES for multipart).",
}


def document(openapi: dict[str, Any]) -> dict[str, Any]:
    """The OpenAPI document with the guards' answers: 403 and 413 on every unsafe operation, 422 (a NUL
    in the URL or a header) on every operation."""
    for operations in openapi.get("paths", {}).values():
        for method, operation in operations.items():
            responses = operation.setdefault("responses", {})
            if method.upper() in UNSAFE:
                for code, description in REFUSALS.items():
                    responses.setdefault(code, {"description": description, "content": _ERROR})
            responses.setdefault(
                "422", {"description": "A NUL character in the URL or a header, or a parameter not valid.",
                        "content": _ERROR},
            )  # fmt: skip
    return openapi
