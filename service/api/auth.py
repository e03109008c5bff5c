"""Who is asking: the API key in `Authorization: Bearer KEY`, verified once and then cached briefly.

Every /v1 route depends on `current_tenant`; health, readiness and the docs pages do not (and the
dashboard at / and /static/ loads without a key and then sends one with its API calls).
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Annotated, Any

import anyio
from fastapi import Depends, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from service.core import keys
from service.core.errors import Invalid, Unauthorized
from service.core.logs import current_request

MAX_CACHED = 10_000

bearer = HTTPBearer(
    auto_error=False,
    scheme_name="ApiKey",
    description="An API key from `alignahead-admin keys create --tenant NAME` (`make run` makes one and says "
    "where it keeps it), sent as `Authorization: Bearer KEY`.",
)


@dataclass(eq=False)
class _Flight:
    """One verification in progress, which every request for the same key waits for."""

    done: anyio.Event = field(default_factory=anyio.Event)
    tenant: str | None = None
    failed: bool = True  # until it returned: a cancelled or failed check decides nothing


class KeyCache:
    """HMAC digest of a key -> (tenant id, expiry): a verified key skips the database for `ttl` seconds,
    so a revocation takes effect within that long."""

    def __init__(self, ttl: float) -> None:
        self.ttl = ttl
        self._entries: dict[str, tuple[str, float]] = {}
        self._flights: dict[str, _Flight] = {}

    def get(self, key_digest: str) -> str | None:
        hit = self._entries.get(key_digest)
        if hit is None or hit[1] < time.monotonic():
            return None
        return hit[0]

    def expiry(self, key_digest: str) -> float | None:
        """When (time.monotonic()) the cached verification of the key lapses; None if none is cached."""
        hit = self._entries.get(key_digest)
        return None if hit is None else hit[1]

    async def tenant(self, key_digest: str, verify: Callable[[], Awaitable[str | None]]) -> str | None:
        """The key's tenant: cached, else `verify()`d, once however many requests (or open event
        streams, whose checks fall due together) ask for the same key at the same time."""
        while True:
            hit = self.get(key_digest)
            if hit is not None:
                return hit
            flight = self._flights.get(key_digest)
            if flight is None:
                flight = self._flights[key_digest] = _Flight()
                try:
                    flight.tenant = await verify()
                    flight.failed = False
                    if flight.tenant is not None:
                        self.put(key_digest, flight.tenant)
                finally:
                    del self._flights[key_digest]
                    flight.done.set()
                return flight.tenant
            await flight.done.wait()
            if not flight.failed:
                return flight.tenant

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
    """The id of the tenant whose key came with the request (401 without a valid one); the request's
    log lines say it from here on."""
    tenant_id = await _tenant_of(request, credentials)
    logged = current_request()
    if logged is not None:
        logged.tenant = tenant_id
    return tenant_id


async def _tenant_of(request: Request, credentials: HTTPAuthorizationCredentials | None) -> str:
    ctx = request.app.state.context
    if ctx.settings.auth_disabled:
        return ctx.local_tenant_id
    if credentials is None:
        raise Unauthorized(
            "this endpoint needs an API key: send the header 'Authorization: Bearer <key>' "
            "(`alignahead-admin keys create --tenant NAME` makes one)"
        )
    tenant_id = await verified_tenant(ctx, credentials.credentials)
    if tenant_id is None:
        raise Unauthorized("the API key is unknown, revoked or malformed; check it or ask for a new one")
    return tenant_id


def api_key(credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]) -> str | None:
    """The key the request came with (None without one); `current_tenant` has checked it."""
    return None if credentials is None else credentials.credentials


async def verified_tenant(ctx: Any, key: str) -> str | None:
    """The tenant of a valid, unrevoked key (from the cache while it is fresh); None otherwise."""
    return await ctx.key_cache.tenant(keys.digest(ctx.secret, key), lambda: run_in_threadpool(_verify, ctx, key))


def _verify(ctx, key: str) -> str | None:  # type: ignore[no-untyped-def]
    with ctx.tx() as s:
        return keys.verify(s, ctx.secret, key)


class KeyWatch:
    """An open event stream's key, checked again whenever the auth cache would ask the database (so a
    revoked key's stream ends within `auth_cache_seconds`, as its requests start failing); `floor`
    seconds apart when nothing is cached (`auth_cache_seconds` 0)."""

    def __init__(self, ctx: Any, key: str, tenant: str, floor: float) -> None:
        self.ctx, self.key, self.tenant, self.floor = ctx, key, tenant, floor
        self.digest = keys.digest(ctx.secret, key)
        self.due = self._next()

    def _next(self) -> float:
        now = time.monotonic()
        expiry = self.ctx.key_cache.expiry(self.digest)
        return now + self.floor if expiry is None or expiry <= now else expiry

    def seconds_left(self) -> float:
        return max(0.0, self.due - time.monotonic())

    async def still_valid(self) -> bool:
        """Checked once due (cached while another stream or request verified it meanwhile)."""
        if time.monotonic() < self.due:
            return True
        valid = await verified_tenant(self.ctx, self.key) == self.tenant
        self.due = self._next()
        return valid


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
