"""Reading a multipart upload with a hard size cap, counted while the body streams in.

Checking Content-Length alone is not enough (chunked bodies have none), and letting the form parser
spool an arbitrarily large body to disk before refusing it wastes disk and time.
"""

from __future__ import annotations

import io
import zipfile

from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException
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
    if length.isascii() and length.isdigit() and int(length) > max_bytes + MULTIPART_SLACK:
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
    try:
        async with limited.form(max_files=1, max_fields=16) as form:
            part = form.get(field)
            if not isinstance(part, UploadFile):
                raise Invalid(["body", field], f"send the npz file as multipart/form-data field {field!r}")
            data = await part.read(max_bytes + 1)
            if len(data) > max_bytes:
                raise _too_large(max_bytes)
            return data, part.filename
    except HTTPException as e:  # Starlette's multipart parser: a malformed body is the client's to fix
        raise Invalid(["body"], f"not a readable multipart/form-data body: {e.detail}") from e


def check_unpacked_size(data: bytes, max_bytes: int) -> None:
    """Refuse (413) a zip whose members declare more than max_bytes unpacked, before inflating anything:
    zipfile never inflates a member past its declared size, so this bounds what inspection may allocate."""
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as zf:
            total = sum(info.file_size for info in zf.infolist())
    except (zipfile.BadZipFile, OSError, ValueError, EOFError):
        return  # not a zip: inspection says what is wrong with it
    if total > max_bytes:
        raise TooLarge(
            f"the npz unpacks to {total:,} bytes, above the limit of {max_bytes:,} (ALIGNAHEAD_MAX_UNPACKED_BYTES), "
            "which the workers apply too; shrink the dataset (sparse CSR features help)"
        )
