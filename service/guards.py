"""Request guards that run before routing: JSON bodies bounded in size and depth, and state-changing
requests from foreign browser origins refused.

A browser may send a cross-origin multipart POST without asking first (a "simple" request), so CORS
alone does not stop a page elsewhere from uploading or submitting in a logged-in user's name: any
unsafe request whose Origin is neither the API's own nor listed in ALIGNAHEAD_CORS_ORIGINS is a 403.
Clients that are not browsers send no Origin and are not affected.
"""

from __future__ import annotations

import re
from array import array
from itertools import accumulate

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.errors import Forbidden, Invalid, ServiceError, TooLarge
from service.handlers import error_response
from service.settings import Settings

UNSAFE = {"POST", "PUT", "PATCH", "DELETE"}
_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"')
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")
_SIGNS = bytes.maketrans(b"[]{}", b"\x01\xff\x01\xff")


def json_depth(body: bytes) -> int:
    """The deepest nesting of arrays and objects in a JSON text (strings skipped), in C-speed passes."""
    brackets = _STRING.sub(b"", body).translate(None, _NOT_BRACKETS).translate(_SIGNS)
    return max(accumulate(array("b", brackets)), default=0)


class Guards:
    def __init__(self, app: ASGIApp, settings: Settings) -> None:
        self.app = app
        self.settings = settings
        self.allowed = set(settings.cors_origins)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] not in UNSAFE:
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        try:
            self._check_origin(scope, headers)
            if headers.get("content-type", "").split(";")[0].strip().endswith("json"):
                body = await self._json_body(headers, receive)
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

    async def _json_body(self, headers: Headers, receive: Receive) -> bytes:
        limit = self.settings.max_json_bytes
        too_large = TooLarge(
            f"the JSON body is larger than {limit} bytes (ALIGNAHEAD_MAX_JSON_BYTES); a job spec is a few hundred"
        )
        length = headers.get("content-length", "")
        if length.isascii() and length.isdigit() and int(length) > limit:
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
        depth = json_depth(body)
        if depth > self.settings.max_json_depth:
            raise Invalid(
                ["body"],
                f"the JSON body nests {depth} levels deep, deeper than the {self.settings.max_json_depth} accepted "
                "(ALIGNAHEAD_MAX_JSON_DEPTH); a job spec nests at most 4",
                kind="json_too_deep",
            )
        return body


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
