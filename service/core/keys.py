"""API keys: made, hashed, looked up and revoked; and the server secret they are hashed under.

A key reads `alh_<id>_<secret>`: <id> (12 hex digits) is public and finds the row; the database keeps
only HMAC-SHA256(server secret, whole key). Verifying is one primary-key lookup and one HMAC (a few
microseconds), and a stolen copy of the database verifies nothing without the server secret. Keys
carry 256 random bits, so no slow password hash is needed against guessing.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import re
import secrets
import uuid
from collections.abc import Sequence
from pathlib import Path

from sqlalchemy import select, update
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session

from service.core.db import db_time
from service.core.errors import NotFound
from service.core.models import ApiKey, Tenant
from service.core.settings import Settings

log = logging.getLogger("alignahead.service")
KEY_RE = re.compile(r"^alh_([0-9a-f]{12})_[A-Za-z0-9_-]{43}$")
TENANT_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
LOCAL_TENANT = "local"


class SecretMissing(RuntimeError):
    pass


def server_secret(settings: Settings) -> bytes:
    """ALIGNAHEAD_AUTH_SECRET, else the secret file; the file is created on first use only when the
    job database is SQLite (one machine). Elsewhere a missing secret is an error: API processes that
    each made up their own would not accept each other's keys."""
    if settings.auth_secret is not None:
        return settings.auth_secret.get_secret_value().encode()
    path = Path(settings.auth_secret_file)
    if path.is_file():
        return path.read_text().strip().encode()
    if make_url(settings.database_url).get_backend_name() != "sqlite":
        raise SecretMissing(
            "no server secret for API keys: set ALIGNAHEAD_AUTH_SECRET (the same value for every API process "
            f"and for alignahead-admin), or put it in {path} (ALIGNAHEAD_AUTH_SECRET_FILE)"
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:  # another process made it first
        return path.read_text().strip().encode()
    with os.fdopen(fd, "w") as fh:
        fh.write(secrets.token_hex(32) + "\n")
    log.warning("created the API key secret in %s; keep it: changing it invalidates every key", path)
    return path.read_text().strip().encode()


def digest(secret: bytes, key: str) -> str:
    return hmac.new(secret, key.encode(), hashlib.sha256).hexdigest()


def key_id_of(key: str) -> str | None:
    m = KEY_RE.match(key)
    return m.group(1) if m else None


def ensure_tenant(session: Session, name: str) -> Tenant:
    if not TENANT_RE.match(name):
        raise ValueError(
            f"tenant name {name!r}: use 1-100 letters, digits, '.', '_' or '-', starting with a letter or digit"
        )
    tenant = session.scalar(select(Tenant).where(Tenant.name == name))
    if tenant is None:
        tenant = Tenant(id=uuid.uuid4().hex, name=name, created_at=db_time(session))
        session.add(tenant)
        session.flush()
    return tenant


def create_key(session: Session, secret: bytes, tenant_name: str, label: str | None = None) -> tuple[ApiKey, str]:
    """A new key for the tenant (created if new); the key itself is returned once and never stored."""
    tenant = ensure_tenant(session, tenant_name)
    key_id = secrets.token_hex(6)
    key = f"alh_{key_id}_{secrets.token_urlsafe(32)}"
    row = ApiKey(id=key_id, tenant_id=tenant.id, digest=digest(secret, key), label=label, created_at=db_time(session))
    session.add(row)
    session.flush()
    return row, key


def list_keys(session: Session, tenant_name: str | None = None) -> Sequence[tuple[ApiKey, str]]:
    query = (
        select(ApiKey, Tenant.name).join(Tenant, Tenant.id == ApiKey.tenant_id).order_by(Tenant.name, ApiKey.created_at)
    )
    if tenant_name is not None:
        query = query.where(Tenant.name == tenant_name)
    return [(k, name) for k, name in session.execute(query).all()]


def revoke_key(session: Session, key_id: str) -> ApiKey:
    row = session.get(ApiKey, key_id)
    if row is None:
        raise NotFound(f"no key with id {key_id!r}; `alignahead-admin keys list` shows them")
    if row.revoked_at is None:
        session.execute(update(ApiKey).where(ApiKey.id == key_id).values(revoked_at=db_time(session)))
        session.refresh(row)
    return row


def verify(session: Session, secret: bytes, key: str) -> str | None:
    """The tenant id of a valid, unrevoked key; None otherwise."""
    key_id = key_id_of(key)
    if key_id is None:
        return None
    row = session.execute(
        select(ApiKey.digest, ApiKey.tenant_id, ApiKey.revoked_at).where(ApiKey.id == key_id)
    ).one_or_none()
    if row is None or row.revoked_at is not None or not hmac.compare_digest(row.digest, digest(secret, key)):
        return None
    return row.tenant_id
