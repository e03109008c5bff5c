"""Who is asking: the API key in `Authorization: Bearer KEY`, verified once and then cached briefly.

Every /v1 route depends on `current_tenant`; health, readiness and the docs pages do not (and the
dashboard at / and /static/ loads without a key and then sends one with its API calls).
"""

from __future__ import annotations

import time
from typing import Annotated, Any

from fastapi import Depends, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from service import keys
from service.errors import Invalid, Unauthorized

MAX_CACHED = 10_000

bearer = HTTPBearer(
    auto_error=False,
    scheme_name="ApiKey",
    description="An API key from `alignahead-admin keys create --tenant NAME` (`make run` makes one and says "
    "where it keeps it), sent as `Authorization: Bearer KEY`.",
)


class KeyCache:
    """HMAC digest of a key -> (tenant id, expiry): a verified key skips the database for `ttl` seconds,
    so a revocation takes effect within that long."""

    def __init__(self, ttl: float) -> None:
        self.ttl = ttl
        self._entries: dict[str, tuple[str, float]] = {}

    def get(self, key_digest: str) -> str | None:
        hit = self._entries.get(key_digest)
        if hit is None or hit[1] < time.monotonic():
            return None
        return hit[0]

    def get_key(self, secret: bytes, key: str) -> str | None:
        """The tenant of `key` if it was verified within the last `ttl` seconds."""
        return self.get(keys.digest(secret, key))

    def put(self, key_digest: str, tenant_id: str) -> None:
        if self.ttl <= 0:
            return
        if len(self._entries) >= MAX_CACHED:
            self._entries.clear()
        self._entries[key_digest] = (tenant_id, time.monotonic() + self.ttl)


def bearer_key(authorization: str) -> str | None:
    """The key of an `Authorization: Bearer KEY` header value, as HTTPBearer reads it; None otherwise."""
    scheme, _, key = authorization.partition(" ")
    return key if scheme.lower() == "bearer" and key else None


async def current_tenant(
    request: Request, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]
) -> str:
    """The id of the tenant whose key came with the request (401 without a valid one)."""
    ctx = request.app.state.context
    if ctx.settings.auth_disabled:
        return ctx.local_tenant_id
    if credentials is None:
        raise Unauthorized(
            "this endpoint needs an API key: send the header 'Authorization: Bearer <key>' "
            "(`alignahead-admin keys create --tenant NAME` makes one)"
        )
    key = credentials.credentials
    key_digest = keys.digest(ctx.secret, key)
    tenant_id = ctx.key_cache.get(key_digest)
    if tenant_id is None:
        tenant_id = await run_in_threadpool(_verify, ctx, key)
        if tenant_id is None:
            raise Unauthorized("the API key is unknown, revoked or malformed; check it or ask for a new one")
        ctx.key_cache.put(key_digest, tenant_id)
    return tenant_id


def _verify(ctx, key: str) -> str | None:  # type: ignore[no-untyped-def]
    with ctx.tx() as s:
        return keys.verify(s, ctx.secret, key)


_declared: dict[int, frozenset[str]] = {}


def _query_names(dependant: Any) -> set[str]:
    names = {p.alias for p in dependant.query_params}
    for sub in dependant.dependencies:
        names |= _query_names(sub)
    return names


async def known_query(request: Request) -> None:
    """An unknown query parameter (a typo such as ?stauts=) is a 422, not silently ignored."""
    route = request.scope.get("route")
    if route is None or not request.query_params:
        return
    names = _declared.get(id(route))
    if names is None:
        names = _declared[id(route)] = frozenset(_query_names(route.dependant))
    unknown = [k for k in request.query_params if k not in names]
    if unknown:
        accepted = ", ".join(sorted(names)) or "none"
        raise Invalid(
            ["query", unknown[0]], f"unknown query parameter {unknown[0]!r}; this endpoint accepts: {accepted}"
        )
