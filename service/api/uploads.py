"""Reading a multipart upload with a hard size cap.

Checking Content-Length alone is not enough (chunked bodies have none), and letting the form parser
spool an arbitrarily large body to disk before refusing it wastes disk and time: service.api.guards counts
a multipart body as it streams and refuses it (413) past max_upload_bytes plus MULTIPART_SLACK; here
the file field itself is held to max_upload_bytes, and its filename to what the database stores.
"""

from __future__ import annotations

import io
import zipfile

from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException
from starlette.requests import Request

from service.api.guards import MULTIPART, check_text, media_type, too_large_upload
from service.core.errors import Invalid, TooLarge

MAX_FILENAME_CHARS = 255  # uploads.filename


async def read_file_field(request: Request, max_bytes: int, field: str = "file") -> tuple[bytes, str | None]:
    """The bytes and filename of the multipart field `field`, refusing more than max_bytes."""
    if media_type(request.headers) != MULTIPART:
        raise Invalid(["body", field], f"send the npz file as multipart/form-data field {field!r}")
    try:
        async with request.form(max_files=1, max_fields=16) as form:
            part = form.get(field)
            if not isinstance(part, UploadFile):
                raise Invalid(["body", field], f"send the npz file as multipart/form-data field {field!r}")
            data = await part.read(max_bytes + 1)
            if len(data) > max_bytes:
                raise too_large_upload(max_bytes)
            return data, _filename(part.filename, field)
    except HTTPException as e:  # Starlette's multipart parser: a malformed body is the client's to fix
        raise Invalid(["body"], f"not a readable multipart/form-data body: {e.detail}") from e


def _filename(name: str | None, field: str) -> str | None:
    """The part's filename as stored: informational, so a long one is cut; a NUL is refused, as everywhere."""
    if name is None:
        return None
    check_text(["body", field, "filename"], name, "the file's name")
    return name[:MAX_FILENAME_CHARS]


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
