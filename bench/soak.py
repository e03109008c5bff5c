"""Soak: N jobs through real workers while a killer SIGKILLs a random busy worker at random epochs.

    python bench/soak.py [--jobs 12] [--workers 2] [--kills 8] [--epochs 40] [--backend postgres|embedded]

Real processes throughout: an API (uvicorn), W Celery workers, PostgreSQL + Redis (a temporary database
and a queue prefix of its own; or the embedded SQLite default). Each job has a polling client that
follows `metrics?since=` as a script would. A killed worker is replaced at once, as a supervisor would.
At the end it prints: jobs completed, metric rows lost and duplicated as seen by the polling clients,
attempts per job, and the time from each kill to the job's resumption (its next claim). All must be
N completed, 0 lost, 0 duplicated.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import tempfile
import threading
import time
import uuid
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "service"))  # the test suite's process helpers

from svc_helpers import (  # noqa: E402
    FAST,
    REDIS_URL,
    TEST_SECRET,
    ApiServer,
    Worker,
    embedded_settings,
    long_spec,
    make_key,
    migrate,
    temporary_postgres_database,
)

from service.core.broker import declare_queues, make_celery  # noqa: E402
from service.core.settings import Settings  # noqa: E402

FINISHED = ("succeeded", "failed", "cancelled")


class Follower(threading.Thread):
    """One client per job: status and new metric rows, retrying through errors."""

    def __init__(self, api: ApiServer, job_id: str) -> None:
        super().__init__(daemon=True)
        self.api, self.job_id = api, job_id
        self.rows: list[dict[str, Any]] = []
        self.job: dict[str, Any] = {}
        self.claims: list[tuple[float, int]] = []  # (when, attempts) each time attempts changed
        self.losses: list[tuple[float, int]] = []  # (when, worker_losses) each time it changed

    def run(self) -> None:
        since = 0
        with self.api.client(timeout=10) as c:
            while True:
                try:
                    job = c.get(f"/v1/jobs/{self.job_id}").raise_for_status().json()
                    page = c.get(f"/v1/jobs/{self.job_id}/metrics", params={"since": since}).raise_for_status().json()
                except httpx.HTTPError:
                    time.sleep(0.2)
                    continue
                if not self.claims or self.claims[-1][1] != job["attempts"]:
                    self.claims.append((time.monotonic(), job["attempts"]))
                if not self.losses or self.losses[-1][1] != job["worker_losses"]:
                    self.losses.append((time.monotonic(), job["worker_losses"]))
                self.job = job
                self.rows += page["rows"]
                since = page["next_since"]
                if job["status"] in FINISHED and not page["rows"]:
                    return
                time.sleep(0.1)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--jobs", type=int, default=12)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--kills", type=int, default=8)
    p.add_argument("--epochs", type=int, default=40)
    p.add_argument("--nodes", type=int, default=600)
    p.add_argument("--backend", choices=("postgres", "embedded"), default="postgres")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    rng = random.Random(args.seed)
    folder = Path(tempfile.mkdtemp(prefix="soak-"))
    # no job may fail for lack of attempts: the soak counts them instead
    extra = {**FAST, "max_attempts": 1000, "max_active_jobs": 10_000, "max_submissions_per_minute": 10_000}
    with ExitStack() as stack:
        if args.backend == "postgres":
            url = stack.enter_context(temporary_postgres_database("alignahead_soak"))
            settings = Settings(database_url=url, broker_url=REDIS_URL, queue_prefix=f"soak{uuid.uuid4().hex[:6]}.",
                                data_dir=str(folder / "data"), auth_secret=TEST_SECRET, **extra)  # fmt: skip
        else:
            settings = embedded_settings(folder, **extra)
        migrate(settings.database_url)
        declare_queues(make_celery(settings), settings)  # before several processes race to create them
        api = ApiServer(settings, folder / "api.log", key=make_key(settings, "soak"))
        stack.callback(api.kill)
        workers = [Worker(settings, folder / f"w{i}.log", f"w{i}") for i in range(args.workers)]
        stack.callback(lambda: [w.stop() for w in workers])
        api.wait_ready()
        for w in workers:
            w.wait_ready()
        print(f"soak: {args.jobs} jobs x {args.epochs} epochs, {args.workers} workers, up to {args.kills} kills, "
              f"{args.backend}; lease {settings.stale_after_seconds:g} s, sweep every "
              f"{settings.sweep_interval_seconds:g} s; logs in {folder}", flush=True)  # fmt: skip

        t0 = time.monotonic()
        followers = []
        with api.client() as c:
            for _ in range(args.jobs):
                job = c.post("/v1/jobs", json=long_spec(epochs=args.epochs, num_nodes=args.nodes, width=16))
                followers.append(Follower(api, job.raise_for_status().json()["id"]))
        for f in followers:
            f.start()

        kills: list[dict[str, Any]] = []
        spawned = args.workers
        while any(f.is_alive() for f in followers) and len(kills) < args.kills:
            time.sleep(rng.uniform(1.0, 4.0))
            busy = [f for f in followers if f.job.get("status") == "running" and f.job.get("worker")
                    and 1 <= f.job["progress"]["epoch"] < args.epochs - 2]  # fmt: skip
            if not busy:
                continue
            target = rng.choice(busy)
            pid = int(target.job["worker"].rsplit(":", 1)[1])
            victims = [w for w in workers if w.proc.pid == pid and w.proc.poll() is None]
            if not victims:
                continue
            victims[0].kill()
            kills.append({"job": target, "at": time.monotonic(), "epoch": target.job["progress"]["epoch"],
                          "attempts": target.job["attempts"], "losses": target.job["worker_losses"]})  # fmt: skip
            workers.remove(victims[0])
            workers.append(Worker(settings, folder / f"w{spawned}.log", f"w{spawned}"))  # the supervisor's restart
            spawned += 1
        for f in followers:
            f.join(timeout=900)
        wall = time.monotonic() - t0

    expected = {(e, s) for e in range(1, args.epochs + 1) for s in (0, 1)}
    completed = sum(f.job.get("status") == "succeeded" for f in followers)
    lost = duplicated = 0
    for f in followers:
        keys = [(r["epoch"], r["student"]) for r in f.rows]
        seqs = [r["seq"] for r in f.rows]
        duplicated += len(keys) - len(set(keys)) + sum(1 for a, b in zip(seqs, seqs[1:], strict=False) if b <= a)
        lost += len(expected - set(keys))
    resume, taken = [], []
    for k in kills:
        after = [t for t, a in k["job"].claims if t > k["at"] and a > k["attempts"]]
        if after:
            resume.append(after[0] - k["at"])
        back = [t for t, n in k["job"].losses if t > k["at"] and n > k["losses"]]
        if back:
            taken.append(back[0] - k["at"])
    attempts = [f.job.get("attempts", 0) for f in followers]
    print(f"jobs completed:        {completed} / {args.jobs}")
    print(f"rows lost:             {lost}")
    print(f"rows duplicated:       {duplicated}")
    print(f"worker kills:          {len(kills)} (at epochs {sorted(k['epoch'] for k in kills)})")
    losses = sum(f.job.get("worker_losses", 0) for f in followers)
    print(f"attempts per job:      {attempts} (total {sum(attempts)}, lost workers {losses})")
    for name, values in (("kill to take-back", taken), ("kill to resumption", resume)):
        if values:
            print(f"{name + ':':<23}min {min(values):.1f} s, median {statistics.median(values):.1f} s, "
                  f"max {max(values):.1f} s over {len(values)} kills")  # fmt: skip
    print("  (take-back: the lease lapses and a sweep requeues the job; resumption: a worker claims it, which")
    print("   waits for a free worker when all are busy, as the queue would)")
    print(f"wall time:             {wall:.0f} s")
    ok = completed == args.jobs and lost == 0 and duplicated == 0
    print("OK" if ok else "FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
