"""Reading a multipart upload with a hard size cap, counted while the body streams in.

Checking Content-Length alone is not enough (chunked bodies have none), and letting the form parser
spool an arbitrarily large body to disk before refusing it wastes disk and time.
"""

from __future__ import annotations

from starlette.datastructures import UploadFile
from starlette.requests import Request
from starlette.types import Message

from service.errors import Invalid, TooLarge

MULTIPART_SLACK = 64 * 1024  # boundaries and part headers around the file


def _too_large(max_bytes: int) -> TooLarge:
    return TooLarge(
        f"upload exceeds the {max_bytes} byte limit (ALIGNAHEAD_MAX_UPLOAD_BYTES); "
        "shrink the dataset (sparse features help) or ask the operator to raise the limit"
    )


async def read_file_field(request: Request, max_bytes: int, field: str = "file") -> tuple[bytes, str | None]:
    """The bytes and filename of the multipart field `field`, refusing more than max_bytes."""
    length = request.headers.get("content-length", "")
    if length.isdigit() and int(length) > max_bytes + MULTIPART_SLACK:
        raise _too_large(max_bytes)
    received = 0

    async def receive() -> Message:
        nonlocal received
        message = await request.receive()
        if message["type"] == "http.request":
            received += len(message.get("body", b""))
            if received > max_bytes + MULTIPART_SLACK:
                raise _too_large(max_bytes)
        return message

    limited = Request(request.scope, receive)
    if not limited.headers.get("content-type", "").startswith("multipart/form-data"):
        raise Invalid(["body", field], f"send the npz file as multipart/form-data field {field!r}")
    async with limited.form(max_files=1, max_fields=16) as form:
        part = form.get(field)
        if not isinstance(part, UploadFile):
            raise Invalid(["body", field], f"send the npz file as multipart/form-data field {field!r}")
        data = await part.read(max_bytes + 1)
        if len(data) > max_bytes:
            raise _too_large(max_bytes)
        return data, part.filename
