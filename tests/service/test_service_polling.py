"""The polling fast path: the same answers as the routes, FastAPI for everything else, and a cache
that a client's own writes clear."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime

import pytest
from conftest import ROOMY
from sqlalchemy import update
from svc_helpers import Service, api_without_worker, small_spec

from service.api.polling import PollingFastPath
from service.core.models import Job, MetricRow


@pytest.fixture
def cached(tmp_path) -> Iterator[Service]:
    """An API whose poll cache never expires by itself: what it answers from memory is certain."""
    with api_without_worker("cached", tmp_path, poll_cache_seconds=3600.0, **ROOMY) as svc:
        yield svc


def add_rows(svc: Service, job_id: str, epochs: range) -> None:
    with svc.engine.begin() as conn:
        for epoch in epochs:
            for student in (0, 1):
                conn.execute(
                    MetricRow.__table__.insert().values(
                        job_id=job_id, epoch=epoch, student=student, loss=1.0 / epoch, task_loss=0.5,
                        distill_loss=0.25, train_score=None, val_score=0.5, test_score=None, seconds=0.1,
                        created_at=datetime.now(UTC),
                    )
                )  # fmt: skip


def test_fast_path_gives_the_routes_bytes(api: Service) -> None:
    """A new key's first request is verified and answered by FastAPI's route; once the key is known,
    the same request is the fast path's: the two answers must be the same bytes."""
    same_bytes(api)


@pytest.mark.parametrize("service", ["postgres"], indirect=True)
def test_fast_path_gives_the_routes_bytes_on_postgres(service: Service) -> None:
    """On PostgreSQL the fast path reads through a pool of its own (no ping before each read)."""
    assert service.client.app.state.context.hot is not None
    same_bytes(service)


def same_bytes(api: Service) -> None:
    job = api.submit(small_spec(epochs=3))
    api.client.post(f"/v1/jobs/{job['id']}/cancel")  # a finished job changes no more, whatever a worker did
    api.wait(job["id"])
    add_rows(api, job["id"], range(101, 104))
    paths = [
        (f"/v1/jobs/{job['id']}", None),
        (f"/v1/jobs/{job['id']}/metrics", None),
        (f"/v1/jobs/{job['id']}/metrics", {"since": 2, "limit": 3}),
        (f"/v1/jobs/{job['id']}/metrics", {"student": 1}),
        (f"/v1/jobs/{job['id']}/metrics", {"since": 10**6}),
    ]
    for path, params in paths:
        headers = {"Authorization": f"Bearer {api.authorize_other('tests')}"}  # a new key of the same tenant
        routed = api.client.get(path, params=params, headers=headers)
        fast = api.client.get(path, params=params, headers=headers)
        assert fast.status_code == routed.status_code == 200
        assert fast.content == routed.content, path
        assert fast.headers["content-type"] == routed.headers["content-type"] == "application/json"


@pytest.mark.parametrize(
    ("path", "params", "status"),
    [
        ("/v1/jobs/{id}/metrics", {"since": -1}, 422),
        ("/v1/jobs/{id}/metrics", {"since": 2**63}, 422),
        ("/v1/jobs/{id}/metrics", {"limit": 0}, 422),
        ("/v1/jobs/{id}/metrics", {"since": "\u00b3"}, 422),  # a digit to str.isdigit, not to int()
        ("/v1/jobs/{id}/metrics", {"stduent": 1}, 422),  # unknown parameter
        ("/v1/jobs/{id}", {"x": 1}, 422),
        ("/v1/jobs/0123456789abcdef0123456789abcdef", None, 404),
        ("/v1/jobs/0123456789abcdef0123456789abcdef/metrics", None, 404),
    ],
)
def test_everything_else_is_answered_by_fastapi(api: Service, path: str, params: dict | None, status: int) -> None:
    job = api.submit(small_spec(epochs=2))
    r = api.client.get(path.format(id=job["id"]), params=params)
    assert r.status_code == status
    body = r.json()
    assert isinstance(body["detail"], str) and isinstance(body["errors"], list)  # the one error shape


def test_a_key_not_yet_verified_goes_through_fastapi(api: Service) -> None:
    job = api.submit(small_spec(epochs=2))
    assert api.client.get(f"/v1/jobs/{job['id']}", headers={"Authorization": "Bearer nonsense"}).status_code == 401
    assert api.client.get(f"/v1/jobs/{job['id']}", headers={"Authorization": ""}).status_code == 401
    other = api.authorize_other("someone-else")
    r = api.client.get(f"/v1/jobs/{job['id']}", headers={"Authorization": f"Bearer {other}"})
    assert r.status_code == 404  # verified by FastAPI first, then another tenant's id is unknown
    r = api.client.get(f"/v1/jobs/{job['id']}", headers={"Authorization": f"Bearer {other}"})
    assert r.status_code == 404  # and again once its key is cached: the fast path leaves it to FastAPI


def test_answers_come_from_memory_until_this_process_writes(cached: Service) -> None:
    job = cached.submit(small_spec(epochs=3))
    first = cached.job(job["id"])
    assert first["status"] == "queued" and cached.metrics(job["id"])["rows"] == []
    # what another process writes is not seen while the cached answer lives
    with cached.engine.begin() as conn:
        conn.execute(update(Job).where(Job.id == job["id"]).values(name="renamed"))
    add_rows(cached, job["id"], range(1, 3))
    assert cached.job(job["id"]) == first
    assert cached.metrics(job["id"])["rows"] == []
    assert len(cached.metrics(job["id"], since=0, limit=999)["rows"]) == 4  # another question, asked afresh
    # this process's own write clears the job's answers: a client reads its own cancel
    assert cached.client.post(f"/v1/jobs/{job['id']}/cancel").status_code == 200
    now = cached.job(job["id"])
    assert now["status"] == "cancelled" and now["name"] == "renamed"
    assert [(r["epoch"], r["student"]) for r in cached.metrics(job["id"])["rows"]] == [(1, 0), (1, 1), (2, 0), (2, 1)]


def test_the_fast_path_is_in_front_of_the_routes(api: Service) -> None:
    assert any(m.cls is PollingFastPath for m in api.client.app.user_middleware)
