"""Fault injection with real processes: workers SIGKILLed mid-epoch (PostgreSQL + Redis, and the
embedded SQLite default) or frozen past their lease, a Redis of our own killed and restarted, the API
killed while a client polls.

Each time the job ends `succeeded` with metrics, scores and checkpoint tensors equal to an
uninterrupted run in this process, and a client that polled `metrics?since=` throughout saw every
(student, epoch) exactly once, in increasing `seq`. Every wait is on a state the test observes.
"""

from __future__ import annotations

import json
import math
import shutil
import signal
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import torch
from safetensors.torch import load as load_tensors
from svc_helpers import (
    FAST,
    REDIS_URL,
    TEST_SECRET,
    ApiServer,
    Worker,
    embedded_settings,
    free_port,
    long_spec,
    make_key,
    migrate,
    temporary_postgres_database,
)

from alignahead.datasets import load_dataset
from alignahead.spec import JobSpec
from alignahead.trainer import Callbacks, Trainer
from service.core.broker import declare_queues, make_celery
from service.core.settings import Settings

EPOCHS = 30
SPEC = long_spec(epochs=EPOCHS, num_nodes=400, width=16)  # ~0.1 s an epoch: small, yet a kill lands mid-run
VALUES = ("loss", "task_loss", "distill_loss", "train_score", "val_score", "test_score")


# --- the uninterrupted run ------------------------------------------------------------------------


@dataclass
class Reference:
    rows: dict[tuple[int, int], dict[str, Any]] = field(default_factory=dict)
    checkpoints: dict[tuple[int, str], bytes] = field(default_factory=dict)  # the last of each (student, kind)
    students: list[dict[str, Any]] = field(default_factory=list)


_REFERENCE: dict[str, Reference] = {}


def reference(spec: dict[str, Any]) -> Reference:
    key = json.dumps(spec, sort_keys=True)
    if key not in _REFERENCE:
        ref = Reference()
        parsed = JobSpec.model_validate(spec)

        def on_epoch(rows: list[Any]) -> None:
            for r in rows:
                ref.rows[(r.epoch, r.student)] = {k: getattr(r, k) for k in VALUES}

        def on_checkpoint(c: Any) -> None:
            ref.checkpoints[(c.student, c.kind)] = c.data

        callbacks = Callbacks(on_epoch=on_epoch, on_checkpoint=on_checkpoint)
        result = Trainer(parsed, load_dataset(parsed.dataset, seed=parsed.training.seed), callbacks).run()
        ref.students = [vars(s) for s in result.students]
        _REFERENCE[key] = ref
    return _REFERENCE[key]


# --- a polling client -----------------------------------------------------------------------------------


class Poller(threading.Thread):
    """Follows one job as a script would: its status and `metrics?since=`, retrying through errors."""

    def __init__(self, api: ApiServer, job_id: str) -> None:
        super().__init__(daemon=True, name=f"poller-{job_id}")
        self.api, self.job_id = api, job_id
        self.rows: list[dict[str, Any]] = []
        self.job: dict[str, Any] = {}
        self.errors = 0
        self.changed = threading.Condition()
        self._halt = threading.Event()

    def run(self) -> None:
        since = 0
        with self.api.client(timeout=5) as client:
            while not self._halt.is_set():
                try:
                    job = client.get(f"/v1/jobs/{self.job_id}").raise_for_status().json()
                    page = client.get(f"/v1/jobs/{self.job_id}/metrics", params={"since": since}).raise_for_status()
                    rows = page.json()["rows"]
                except httpx.HTTPError:
                    self.errors += 1
                    time.sleep(0.1)
                    continue
                with self.changed:
                    self.rows += rows
                    self.job = job
                    self.changed.notify_all()
                since = page.json()["next_since"]
                if job["status"] in ("succeeded", "failed", "cancelled") and not rows:
                    return  # finished, and a poll after the end brought nothing new
                time.sleep(0.05)

    def wait(self, what: str, check: Callable[[dict[str, Any]], bool], timeout: float = 120) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        with self.changed:
            while not (self.job and check(self.job)):
                left = deadline - time.monotonic()
                if left <= 0 or (not self.is_alive() and not check(self.job)):
                    raise AssertionError(f"{what}: not reached in {timeout} s; job {self.job}")
                self.changed.wait(min(left, 1.0))
            return dict(self.job)

    def stop(self) -> None:
        self._halt.set()


def check_against_reference(api: ApiServer, poller: Poller, spec: dict[str, Any]) -> dict[str, Any]:
    """The job succeeded, the poller saw each row once in increasing seq, and everything equals the
    uninterrupted run."""
    poller.join(timeout=60)
    assert not poller.is_alive(), "the poller did not see the job end"
    job = poller.job
    assert job["status"] == "succeeded", job
    ref = reference(spec)
    seqs = [r["seq"] for r in poller.rows]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs), "seq not strictly increasing"
    keys = [(r["epoch"], r["student"]) for r in poller.rows]
    assert len(keys) == len(set(keys)), f"duplicated rows: {len(keys) - len(set(keys))}"
    assert set(keys) == set(ref.rows), f"lost rows: {sorted(set(ref.rows) - set(keys))[:10]}"
    for r in poller.rows:
        want = ref.rows[(r["epoch"], r["student"])]
        for k in VALUES:
            assert (r[k] is None) == (want[k] is None), (k, r, want)
            if r[k] is not None:
                assert math.isclose(r[k], want[k], rel_tol=1e-9, abs_tol=1e-12), (k, r, want)
    for ours, theirs in zip(job["students"], ref.students, strict=True):
        assert ours["best_epoch"] == theirs["best_epoch"]
        assert ours["best_val"] == pytest.approx(theirs["best_val"], abs=1e-12)
        assert ours["test_at_best"] == pytest.approx(theirs["test_at_best"], abs=1e-12)
    with api.client() as client:
        for (student, kind), data in ref.checkpoints.items():
            r = client.get(f"/v1/jobs/{job['id']}/checkpoints/{student}/{kind}").raise_for_status()
            got, want = load_tensors(r.content), load_tensors(data)
            assert got.keys() == want.keys()
            for name in want:
                assert torch.equal(got[name], want[name]), (student, kind, name)
    return job


class RedisServer:
    """A redis-server of our own on a free port (never the shared one), killable and restartable."""

    def __init__(self, folder: Path) -> None:
        self.port = free_port()
        self.folder = folder
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc: subprocess.Popen[bytes] | None = None
        self.start()

    def start(self) -> None:
        exe = shutil.which("redis-server")
        if exe is None:
            pytest.skip("redis-server is not installed")
        argv = [exe, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                "--dir", str(self.folder)]  # fmt: skip
        self.proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        import redis

        deadline = time.monotonic() + 20
        while True:
            try:
                redis.Redis.from_url(self.url, socket_connect_timeout=1).ping()
                return
            except redis.ConnectionError:
                assert time.monotonic() < deadline, "redis-server did not start"
                time.sleep(0.05)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=10)


# --- deployments ------------------------------------------------------------------------------------------


@dataclass
class Deployment:
    settings: Settings
    api: ApiServer
    workers: list[Worker]
    folder: Path
    redis: Any = None

    def submit(self, spec: dict[str, Any]) -> dict[str, Any]:
        with self.api.client() as client:
            r = client.post("/v1/jobs", json=spec)
        assert r.status_code == 201, r.text
        return r.json()

    def worker_running(self, job: dict[str, Any]) -> Worker:
        pid = int(job["worker"].rsplit(":", 1)[1]) if job.get("worker") else None
        owners = [w for w in self.workers if w.proc.pid == pid]
        assert owners, (job, [w.proc.pid for w in self.workers])
        return owners[0]

    def replace_lost_workers(self) -> None:
        """Start a new worker for each one a test killed or froze; the next test waits for them."""
        for i, w in enumerate(self.workers):
            if w.proc.poll() is None:
                w.proc.send_signal(signal.SIGCONT)
                continue
            self.workers[i] = Worker(self.settings, self.folder / f"w{i}-{uuid.uuid4().hex[:6]}.log", f"w{i}")

    def ready(self) -> Deployment:
        for w in self.workers:
            w.wait_ready()
        return self

    def stop(self) -> None:
        self.api.kill()
        for w in self.workers:
            if w.proc.poll() is not None:
                continue
            try:
                w.proc.send_signal(signal.SIGCONT)
            finally:
                w.stop()


def _deploy(settings: Settings, folder: Path, workers: int = 2) -> Deployment:
    migrate(settings.database_url)
    declare_queues(make_celery(settings), settings)  # before several processes race to create them
    api = ApiServer(settings, folder / "api.log", key=make_key(settings, "faults"))
    started = [Worker(settings, folder / f"w{i}.log", f"w{i}-{uuid.uuid4().hex[:6]}") for i in range(workers)]
    dep = Deployment(settings, api, started, folder)
    try:
        api.wait_ready()
        for w in started:
            w.wait_ready()
    except Exception:
        dep.stop()
        raise
    return dep


def _pg_settings(url: str, broker: str = REDIS_URL, **extra: Any) -> Settings:
    return Settings(
        database_url=url,
        broker_url=broker,
        queue_prefix=f"f{uuid.uuid4().hex[:8]}.",
        auth_secret=TEST_SECRET,
        **{**FAST, **extra},
    )


@pytest.fixture
def pg_url(postgres_database: str) -> Iterator[str]:
    """A PostgreSQL database of the test's own (skips, with the reason, if PostgreSQL or Redis is away)."""
    with temporary_postgres_database("alignahead_fault") as url:
        yield url


@pytest.fixture(scope="module")
def pg_deployment(postgres_database: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    """PostgreSQL + a redis-server of our own (tests kill it), an API process and two workers, shared by
    the tests below; each replaces the workers it killed. queued_grace is long so that only the
    dispatcher, not the sweep's re-send of old messages, can explain a prompt start after an outage."""
    folder = tmp_path_factory.mktemp("faults-pg")
    redis_server = RedisServer(folder)
    with temporary_postgres_database("alignahead_fault") as url:
        dep = _deploy(_pg_settings(url, broker=redis_server.url, queued_grace_seconds=600.0), folder)
        dep.redis = redis_server
        try:
            yield dep
        finally:
            dep.stop()
            redis_server.kill()


@pytest.fixture(params=["postgres", "embedded"])
def deployment(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Deployment]:
    if request.param == "postgres":
        dep = request.getfixturevalue("pg_deployment").ready()
        yield dep
        dep.replace_lost_workers()
        return
    dep = _deploy(embedded_settings(tmp_path), tmp_path)
    yield dep
    dep.stop()


def _follow(dep: Deployment, spec: dict[str, Any]) -> tuple[dict[str, Any], Poller]:
    reference(spec)  # computed before the run, so it never competes with the workers
    job = dep.submit(spec)
    poller = Poller(dep.api, job["id"])
    poller.start()
    return job, poller


# --- the faults -------------------------------------------------------------------------------------------


def test_sigkill_worker_mid_epoch(deployment: Deployment) -> None:
    dep = deployment
    job, poller = _follow(dep, SPEC)
    running = poller.wait("running past epoch 3", lambda j: j["status"] == "running" and j["progress"]["epoch"] >= 3)
    victim = dep.worker_running(running)
    victim.kill()  # SIGKILL: no warm shutdown, no message handed back
    resumed = poller.wait("resumed by the other worker", lambda j: j["attempts"] >= 2)
    done = check_against_reference(dep.api, poller, SPEC)
    assert resumed["attempts"] == 2 and done["attempts"] == 2 and done["worker_losses"] == 1, done
    survivor = next(w for w in dep.workers if w is not victim)
    assert "resumes after epoch" in survivor.log()


def test_sigstop_worker_past_its_lease(pg_deployment: Deployment) -> None:
    """A frozen worker (SIGSTOP) is presumed dead once its lease lapses; when it thaws it finds the job
    taken and stops without writing a row."""
    dep = pg_deployment.ready()
    try:
        job, poller = _follow(dep, SPEC)
        running = poller.wait("running", lambda j: j["status"] == "running" and j["progress"]["epoch"] >= 3)
        frozen = dep.worker_running(running)
        frozen.proc.send_signal(signal.SIGSTOP)
        poller.wait("taken back and resumed", lambda j: j["attempts"] >= 2)
        frozen.proc.send_signal(signal.SIGCONT)
        done = check_against_reference(dep.api, poller, SPEC)
        assert done["attempts"] == 2 and done["worker_losses"] == 1
        deadline = time.monotonic() + 60
        # the thawed worker notices (its next write is fenced off, or PostgreSQL ended the transaction it
        # froze in) and stops without recording anything
        while "another worker" not in frozen.log():
            assert time.monotonic() < deadline, frozen.log()[-3000:]
            time.sleep(0.2)
    finally:
        dep.replace_lost_workers()


def test_redis_killed_and_restarted(pg_deployment: Deployment) -> None:
    """The broker dies mid-job and comes back empty: the running job goes on; a job submitted while it is
    down is stored (201, queued) and leaves within seconds of its return, not after the queued grace."""
    dep = pg_deployment.ready()
    try:
        job, poller = _follow(dep, SPEC)
        poller.wait("running past epoch 3", lambda j: j["status"] == "running" and j["progress"]["epoch"] >= 3)
        dep.redis.kill()
        t0 = time.monotonic()
        second = dep.submit(SPEC)
        assert second["status"] == "queued"
        assert time.monotonic() - t0 < 10  # the submission did not hang on the dead broker
        with dep.api.client() as client:
            r = client.get("/readyz")
            assert r.status_code == 503 and r.json()["checks"]["broker"].startswith("unreachable")
            assert client.get(f"/v1/jobs/{second['id']}").json()["status"] == "queued"
        follower = Poller(dep.api, second["id"])
        follower.start()
        dep.redis.start()
        back = time.monotonic()
        follower.wait("the stored job started", lambda j: j["status"] != "queued", timeout=120)
        started = time.monotonic() - back
        print(f"job submitted during the outage started {started:.1f} s after the broker came back")
        assert started < 60  # seconds (the idle worker's reconnect backoff), never the 600 s grace
        check_against_reference(dep.api, poller, SPEC)
        check_against_reference(dep.api, follower, SPEC)
        assert "stored and will be sent" in (dep.folder / "api.log").read_text()
    finally:
        if dep.redis.proc.poll() is not None:
            dep.redis.start()
        dep.replace_lost_workers()


def test_api_killed_while_a_client_polls(pg_deployment: Deployment) -> None:
    dep = pg_deployment.ready()
    try:
        job, poller = _follow(dep, SPEC)
        poller.wait("running past epoch 3", lambda j: j["status"] == "running" and j["progress"]["epoch"] >= 3)
        errors = poller.errors
        dep.api.restart()  # SIGKILL, then a new process on the same port
        check_against_reference(dep.api, poller, SPEC)
        assert poller.errors > errors  # the poller did see the API go away
    finally:
        dep.replace_lost_workers()


PARALLEL_SPEC = {
    **SPEC,
    "distillation": {"schedule": "simultaneous"},
    "training": {**SPEC["training"], "parallel": "students", "ranks": 2},
}


def test_sigkill_one_rank_of_a_parallel_job(tmp_path: Path) -> None:
    """`training.parallel: students` on a worker offering two devices: SIGKILL the second rank (a process
    the worker spawned) mid-epoch. The attempt ends at once (the other rank's collective fails, no hang),
    the job is requeued as after a lost worker and resumes from its saved state to the numbers and
    checkpoints of an uninterrupted parallel run."""
    import psutil

    dep = _deploy(embedded_settings(tmp_path, worker_devices=2), tmp_path, workers=1)
    try:
        job, poller = _follow(dep, PARALLEL_SPEC)
        running = poller.wait("past epoch 3", lambda j: j["status"] == "running" and j["progress"]["epoch"] >= 3)
        worker = psutil.Process(dep.worker_running(running).proc.pid)
        ranks = [p for p in worker.children() if "spawn_main" in " ".join(p.cmdline())]
        assert len(ranks) == 1, [p.cmdline() for p in worker.children()]
        ranks[0].send_signal(signal.SIGKILL)
        resumed = poller.wait("resumed after the lost rank", lambda j: j["attempts"] >= 2)
        done = check_against_reference(dep.api, poller, PARALLEL_SPEC)
        assert resumed["attempts"] == 2 and done["attempts"] == 2 and done["worker_losses"] == 1, done
        log = dep.workers[0].log()
        assert "ended with signal SIGKILL" in log and "resumes after epoch" in log
        # a cancel reaches every rank within the epoch: the job ends cancelled and its ranks are gone
        long = {**PARALLEL_SPEC, "training": {**PARALLEL_SPEC["training"], "epochs": 10 * EPOCHS}}  # no race to its end
        job = dep.submit(long)
        poller = Poller(dep.api, job["id"])
        poller.start()
        poller.wait("running past epoch 2", lambda j: j["status"] == "running" and j["progress"]["epoch"] >= 2)
        with dep.api.client() as client:
            assert client.post(f"/v1/jobs/{job['id']}/cancel").status_code == 202
        cancelled = poller.wait("cancelled", lambda j: j["status"] == "cancelled")
        assert cancelled["progress"]["epoch"] < 10 * EPOCHS
        assert not [p for p in worker.children() if "spawn_main" in " ".join(p.cmdline())]
        poller.stop()
    finally:
        dep.stop()
