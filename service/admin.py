"""`alignahead-admin`: manage tenants' API keys in the job database.

    alignahead-admin keys create --tenant NAME [--label TEXT]   # prints the new key on its last line
    alignahead-admin keys list [--tenant NAME]
    alignahead-admin keys revoke KEY_ID

Uses the same ALIGNAHEAD_* settings as the API (the database URL and the key secret), so run it where
the API's environment is. The key is shown once; only its HMAC is stored.
"""

from __future__ import annotations

import argparse
import sys

from sqlalchemy import inspect

from service.core import keys
from service.core.db import make_engine, make_sessionmaker, transaction
from service.core.errors import NotFound
from service.core.settings import Settings


def _sessions(settings: Settings):  # type: ignore[no-untyped-def]
    engine = make_engine(settings.database_url)
    if not inspect(engine).has_table("api_keys"):
        raise SystemExit(
            f"the database at {engine.url.render_as_string(hide_password=True)} has no api_keys table: "
            "run `alembic upgrade head` first (make run does it)"
        )
    return engine, make_sessionmaker(engine)


def create(settings: Settings, tenant: str, label: str | None) -> str:
    """Create a key; returns it (the only time it is ever shown)."""
    secret = keys.server_secret(settings)
    engine, sessions = _sessions(settings)
    try:
        with transaction(sessions) as s:
            row, key = keys.create_key(s, secret, tenant, label)
            key_id = row.id
    finally:
        engine.dispose()
    print(f"created key {key_id} for tenant {tenant!r}; it is shown only now, keep it secret:")
    print(key)
    return key


def list_(settings: Settings, tenant: str | None) -> None:
    engine, sessions = _sessions(settings)
    try:
        with transaction(sessions) as s:
            rows = keys.list_keys(s, tenant)
            print(f"{'KEY ID':<14}{'TENANT':<24}{'CREATED (UTC)':<22}{'REVOKED (UTC)':<22}LABEL")
            for key, name in rows:
                revoked = key.revoked_at.strftime("%Y-%m-%d %H:%M:%S") if key.revoked_at else "-"
                created = key.created_at.strftime("%Y-%m-%d %H:%M:%S")
                print(f"{key.id:<14}{name:<24}{created:<22}{revoked:<22}{key.label or ''}")
    finally:
        engine.dispose()


def revoke(settings: Settings, key_id: str) -> None:
    engine, sessions = _sessions(settings)
    try:
        with transaction(sessions) as s:
            row = keys.revoke_key(s, key_id)
            within = f"ALIGNAHEAD_AUTH_CACHE_SECONDS={settings.auth_cache_seconds:g}"
            print(
                f"key {row.id} revoked at {row.revoked_at:%Y-%m-%d %H:%M:%S} UTC; "
                f"API processes stop accepting it within {within} s"
            )
    finally:
        engine.dispose()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="alignahead-admin", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    groups = parser.add_subparsers(dest="group", required=True)
    keys_ = groups.add_parser("keys", help="API keys").add_subparsers(dest="command", required=True)
    c = keys_.add_parser("create", help="create a key for a tenant (the tenant is created if new)")
    c.add_argument("--tenant", required=True)
    c.add_argument("--label", help="a note, e.g. who or what uses the key")
    ls = keys_.add_parser("list", help="list keys (never the keys themselves)")
    ls.add_argument("--tenant")
    r = keys_.add_parser("revoke", help="revoke a key by its id (see list)")
    r.add_argument("key_id")
    args = parser.parse_args(argv)
    settings = Settings()
    try:
        if args.command == "create":
            create(settings, args.tenant, args.label)
        elif args.command == "list":
            list_(settings, args.tenant)
        else:
            revoke(settings, args.key_id)
    except (ValueError, NotFound, keys.SecretMissing) as e:
        print(f"alignahead-admin: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
