"""Crash recovery: a worker SIGKILLed mid-job is replaced, and the job resumes and still succeeds."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest
from fastapi.testclient import TestClient
from svc_helpers import Service, Worker, embedded_settings, long_spec, migrate

from alignahead.datasets import load_dataset
from alignahead.spec import JobSpec
from alignahead.trainer import Trainer
from service.api.app import create_app
from service.core.db import make_engine


@pytest.fixture
def fresh(tmp_path) -> Iterator[Service]:
    """An embedded backend of its own (no shared worker): this test kills workers."""
    settings = embedded_settings(tmp_path)
    migrate(settings.database_url)
    engine = make_engine(settings.database_url)
    svc = None
    try:
        with TestClient(create_app(settings)) as client:
            svc = Service("recovery", settings, client, engine, tmp_path)
            svc.authorize()
            yield svc
    finally:
        for w in svc.workers if svc else []:
            w.stop()
        engine.dispose()


def test_killed_worker_job_resumes_on_another(fresh: Service) -> None:
    epochs = 40
    first = Worker(fresh.settings, fresh.workdir / "w1.log", "w1")
    fresh.workers.append(first)
    first.wait_ready()
    job = fresh.submit(long_spec(epochs=epochs, num_nodes=1000))
    fresh.wait(job["id"], until=lambda j: j["progress"]["epoch"] >= 5, timeout=120)
    first.kill()
    killed_at = datetime.now(UTC)
    stuck = fresh.job(job["id"])
    assert stuck["status"] == "running" and stuck["progress"]["epoch"] < epochs

    second = Worker(fresh.settings, fresh.workdir / "w2.log", "w2")
    fresh.workers.append(second)
    second.wait_ready()
    done = fresh.wait(job["id"], timeout=180)
    assert done["status"] == "succeeded", (done, second.log()[-3000:])
    assert done["attempts"] == 2
    assert "resumes after epoch" in second.log()

    rows = fresh.metrics(job["id"], limit=10_000)["rows"]
    assert sorted((r["epoch"], r["student"]) for r in rows) == [(e, s) for e in range(1, epochs + 1) for s in (0, 1)]
    # epochs before the kill were kept, not retrained
    assert any(datetime.fromisoformat(r["created_at"]) < killed_at for r in rows)
    listing = fresh.client.get(f"/v1/jobs/{job['id']}/checkpoints").json()
    assert all(s["best"] and s["final"] for s in listing["students"])

    # and the numbers are those of an uninterrupted run
    spec = JobSpec.model_validate(done["spec"])
    result = Trainer(spec, load_dataset(spec.dataset, seed=spec.training.seed)).run()
    for ours, theirs in zip(done["students"], result.students, strict=True):
        assert ours["best_epoch"] == theirs.best_epoch
        assert ours["best_val"] == pytest.approx(theirs.best_val, abs=1e-9)
        assert ours["test_at_best"] == pytest.approx(theirs.test_at_best, abs=1e-9)


def test_warm_shutdown_hands_the_job_back(fresh: Service) -> None:
    """SIGTERM mid-job: the worker stops at the next step, requeues the job and exits promptly;
    the next worker resumes it from the saved state."""
    epochs = 40
    first = Worker(fresh.settings, fresh.workdir / "w1.log", "w1")
    fresh.workers.append(first)
    first.wait_ready()
    job = fresh.submit(long_spec(epochs=epochs, num_nodes=1000))
    fresh.wait(job["id"], until=lambda j: j["progress"]["epoch"] >= 3, timeout=120)
    t0 = time.monotonic()
    first.terminate()
    assert time.monotonic() - t0 < 20  # did not sit out the rest of the job
    back = fresh.job(job["id"])
    assert back["status"] == "queued" and back["attempts"] == 1, back
    assert "handed back" in first.log()

    second = Worker(fresh.settings, fresh.workdir / "w2.log", "w2")
    fresh.workers.append(second)
    second.wait_ready()
    done = fresh.wait(job["id"], timeout=180)
    assert done["status"] == "succeeded" and done["attempts"] == 2, done
    # the job's log tells the story across both workers, numbered on from the first attempt's lines
    lines = fresh.client.get(f"/v1/jobs/{job['id']}/logs").json()["lines"]
    assert [x["seq"] for x in lines] == list(range(1, len(lines) + 1))
    story = "\n".join(x["message"] for x in lines)
    steps = ["attempt 1 on worker", "handing the job back", "attempt 2 (of at most 3), resuming", "resumes after epoch"]
    assert all(s in story for s in steps), story
    assert [story.index(s) for s in steps] == sorted(story.index(s) for s in steps)
    rows = fresh.metrics(job["id"], limit=10_000)["rows"]
    assert sorted((r["epoch"], r["student"]) for r in rows) == [(e, s) for e in range(1, epochs + 1) for s in (0, 1)]
