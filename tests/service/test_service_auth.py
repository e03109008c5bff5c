"""Keys and tenants: nothing under /v1 answers without a key, a tenant never sees another's data, keys
are stored only as HMACs, the admin command works, and browsers from foreign origins change nothing."""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import text
from svc_helpers import ROOT, Service, bearer, embedded_settings, migrate, npz_bytes, settings_env, small_spec

from service.api.app import create_app
from service.core.db import make_engine

PUBLIC = {"/healthz", "/readyz", "/openapi.json", "/docs", "/redoc"}


def operations(client: TestClient) -> list[tuple[str, str]]:
    """(method, path) of every documented operation, ids filled in with a placeholder."""
    spec = client.get("/openapi.json").json()
    ops = []
    for path, item in spec["paths"].items():
        for method in item:
            ops.append((method.upper(), re.sub(r"\{student\}", "0", re.sub(r"\{kind\}", "best", path))))
    return ops


def test_every_v1_operation_needs_a_key(api: Service) -> None:
    anonymous = TestClient(api.client.app)
    ops = operations(api.client)
    assert len([p for _, p in ops if p.startswith("/v1/")]) >= 10
    for method, path in ops:
        r = anonymous.request(method, path.replace("{job_id}", "x").replace("{upload_id}", "x"))
        if path in PUBLIC:
            assert r.status_code < 400, (method, path, r.status_code)
            continue
        assert r.status_code == 401, (method, path, r.status_code, r.text)
        assert r.headers["www-authenticate"] == "Bearer"
        assert "Authorization: Bearer" in r.json()["detail"] and r.json()["errors"] == []
        wrong = anonymous.request(method, path, headers=bearer("alh_000000000000_" + "x" * 43))
        assert wrong.status_code == 401, (method, path)
    for page in ("/docs", "/redoc", "/openapi.json"):
        assert anonymous.get(page).status_code == 200
    # the scheme is documented, so clients and the docs page know to send it
    assert "ApiKey" in api.client.get("/openapi.json").json()["components"]["securitySchemes"]


def test_another_tenants_ids_are_404_everywhere(api: Service) -> None:
    up = api.upload(npz_bytes()).json()
    spec = small_spec()
    job = api.submit(spec)
    done = api.submit(small_spec())
    api.client.post(f"/v1/jobs/{done['id']}/cancel")
    other = TestClient(api.client.app, headers=bearer(api.authorize_other("intruder")))

    ops = [(m, p) for m, p in operations(api.client) if "{job_id}" in p or "{upload_id}" in p]
    assert len(ops) >= 8
    for method, path in ops:
        jid = done["id"] if method == "DELETE" else job["id"]
        url = path.replace("{job_id}", jid).replace("{upload_id}", up["id"])
        r = other.request(method, url)
        assert r.status_code == 404, (method, url, r.status_code, r.text)
        assert r.json()["errors"] == []
    # nor do listings show them, nor can a spec use the other tenant's upload
    assert other.get("/v1/jobs").json()["jobs"] == []
    assert other.get("/v1/datasets").json()["uploads"] == []
    spec["dataset"] = up["dataset_spec"]
    r = other.post("/v1/jobs", json=spec)
    assert r.status_code == 422 and "no uploaded dataset" in r.json()["detail"]
    # and the owner still has everything
    assert api.client.get(f"/v1/jobs/{job['id']}").status_code == 200
    assert api.client.get(f"/v1/datasets/{up['id']}").status_code == 200
    assert api.client.get(f"/v1/jobs/{done['id']}").json()["status"] == "cancelled"


def test_keys_are_stored_as_hmacs_only(api: Service) -> None:
    key = api.authorize_other("stored")
    with api.engine.connect() as conn:
        rows = conn.execute(text("SELECT id, digest FROM api_keys")).all()
        dump = " ".join(str(v) for r in rows for v in r)
    assert key not in dump and key.split("_")[2] not in dump
    assert key.split("_")[1] in {r.id for r in rows}  # the public part finds the row


@pytest.fixture
def uncached(tmp_path: Path) -> Iterator[Service]:
    """An API that checks the database on every request (no key cache), and an admin environment."""
    settings = embedded_settings(tmp_path, auth_cache_seconds=0)
    migrate(settings.database_url)
    engine = make_engine(settings.database_url)
    with TestClient(create_app(settings)) as client:
        yield Service("uncached", settings, client, engine, tmp_path)
    engine.dispose()


def admin(settings, *args: str) -> subprocess.CompletedProcess[str]:  # type: ignore[no-untyped-def]
    exe = Path(sys.executable).with_name("alignahead-admin")
    return subprocess.run([str(exe), *args], env=settings_env(settings), cwd=ROOT, text=True, capture_output=True,
                          timeout=60)  # fmt: skip


def test_admin_command_creates_lists_and_revokes_keys(uncached: Service) -> None:
    made = admin(uncached.settings, "keys", "create", "--tenant", "team-a", "--label", "ci")
    assert made.returncode == 0, made.stderr
    key = made.stdout.strip().splitlines()[-1]
    assert re.fullmatch(r"alh_[0-9a-f]{12}_[A-Za-z0-9_-]{43}", key)
    key_id = key.split("_")[1]
    c = uncached.client
    assert c.get("/v1/jobs", headers=bearer(key)).status_code == 200

    listed = admin(uncached.settings, "keys", "list")
    assert listed.returncode == 0 and key_id in listed.stdout and "team-a" in listed.stdout
    assert key.split("_")[2] not in listed.stdout

    revoked = admin(uncached.settings, "keys", "revoke", key_id)
    assert revoked.returncode == 0 and "revoked" in revoked.stdout
    r = c.get("/v1/jobs", headers=bearer(key))
    assert r.status_code == 401 and "revoked" in r.json()["detail"]
    assert "-" not in admin(uncached.settings, "keys", "list", "--tenant", "team-a").stdout.splitlines()[1].split()[3]

    bad = admin(uncached.settings, "keys", "revoke", "nope")
    assert bad.returncode == 2 and "no key" in bad.stderr
    bad = admin(uncached.settings, "keys", "create", "--tenant", "no spaces please")
    assert bad.returncode == 2 and "tenant name" in bad.stderr


def test_secret_is_required_off_sqlite(tmp_path: Path) -> None:
    """Several API processes must share one secret: off SQLite none is made up silently."""
    from service.core.keys import SecretMissing, server_secret
    from service.core.settings import Settings

    settings = Settings(database_url="postgresql+psycopg://x@127.0.0.1:1/x", auth_secret_file=tmp_path / "s")
    with pytest.raises(SecretMissing, match="ALIGNAHEAD_AUTH_SECRET"):
        server_secret(settings)
    local = Settings(database_url=f"sqlite:///{tmp_path / 'a.db'}", auth_secret_file=tmp_path / "s")
    assert server_secret(local) == server_secret(local)  # made once, then read
    assert (tmp_path / "s").stat().st_mode & 0o777 == 0o600


def test_disabled_auth_is_explicit_and_serves_tenant_local(tmp_path: Path) -> None:
    settings = embedded_settings(tmp_path, auth_disabled=True)
    migrate(settings.database_url)
    with TestClient(create_app(settings)) as client:
        job = client.post("/v1/jobs", json=small_spec())
        assert job.status_code == 201
        assert client.get(f"/v1/jobs/{job.json()['id']}").status_code == 200


# --- browsers ---------------------------------------------------------------------------------------


def test_cors_is_off_and_foreign_origins_cannot_write(api: Service) -> None:
    evil = {"Origin": "https://evil.example"}
    r = api.client.get("/v1/jobs", headers=evil)
    assert r.status_code == 200 and "access-control-allow-origin" not in r.headers
    pre = api.client.options("/v1/jobs", headers={**evil, "Access-Control-Request-Method": "POST"})
    assert "access-control-allow-origin" not in pre.headers
    # a page elsewhere posting a form (no preflight needed) is refused, key or not
    files = {"file": ("g.npz", npz_bytes(), "application/octet-stream")}
    r = api.client.post("/v1/datasets", files=files, headers=evil)
    assert r.status_code == 403 and "ALIGNAHEAD_CORS_ORIGINS" in r.json()["detail"]
    r = api.client.post("/v1/jobs", json=small_spec(), headers=evil)
    assert r.status_code == 403
    # the API's own origin (a dashboard it serves) may
    own = api.client.post("/v1/datasets", files=files, headers={"Origin": "http://testserver"})
    assert own.status_code == 201, own.text


def test_cross_origin_upload_refused_even_without_auth(tmp_path: Path) -> None:
    settings = embedded_settings(tmp_path, auth_disabled=True)
    migrate(settings.database_url)
    with TestClient(create_app(settings)) as client:
        files = {"file": ("g.npz", npz_bytes(), "application/octet-stream")}
        r = client.post("/v1/datasets", files=files, headers={"Origin": "https://evil.example"})
        assert r.status_code == 403
        assert client.get("/v1/datasets").json()["uploads"] == []


def test_configured_origins_get_cors(tmp_path: Path) -> None:
    settings = embedded_settings(tmp_path, cors_origins=["https://ui.example"])
    migrate(settings.database_url)
    with TestClient(create_app(settings)) as client:
        ok = {"Origin": "https://ui.example", "Access-Control-Request-Method": "POST",
              "Access-Control-Request-Headers": "authorization,content-type"}  # fmt: skip
        pre = client.options("/v1/jobs", headers=ok)
        assert pre.status_code == 200 and pre.headers["access-control-allow-origin"] == "https://ui.example"
        assert "authorization" in pre.headers["access-control-allow-headers"].lower()
        other = client.options("/v1/jobs", headers={**ok, "Origin": "https://evil.example"})
        assert other.status_code == 400 and "access-control-allow-origin" not in other.headers
