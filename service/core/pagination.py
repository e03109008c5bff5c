"""Opaque keyset cursors: the (created_at, id) of the last row a page showed.

Keyset rather than offset pagination: pages stay stable while new jobs arrive, and each page is one
index range scan however deep the client pages.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from datetime import UTC, datetime

from service.core.errors import Invalid

_ROW_ID = re.compile(r"[0-9a-f]{32}")  # service.jobcore.new_id: what the database can compare it with


def encode_cursor(created_at: datetime, row_id: str) -> str:
    raw = json.dumps([created_at.isoformat(), row_id], separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, str]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        stamp, row_id = json.loads(raw)
        created_at = datetime.fromisoformat(stamp)
        if created_at.tzinfo is None or not isinstance(row_id, str) or not _ROW_ID.fullmatch(row_id):
            raise ValueError("malformed")
        return created_at.astimezone(UTC), row_id
    except (ValueError, TypeError, OverflowError, binascii.Error, UnicodeDecodeError) as e:
        raise Invalid(
            ["query", "cursor"], "invalid cursor; pass back the next_cursor of a previous page unchanged"
        ) from e
