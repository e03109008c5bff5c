"""The worker's time outside training, for a Cora-sized 200-epoch job.

    python bench/overhead.py [--backend postgres|embedded] [--epochs 200]

Runs examples/cora-gcn-alignahead.yaml (the real Cora file of ../shared/datasets/cora.npz, uploaded
through the API; a synthetic graph of Cora's size if the file is absent) through a real Celery worker
with the service's default settings (state saved every 5 epochs, a best checkpoint at every improvement),
and prints what the worker measured of its own time: dataset loading and set-up, the per-epoch writes
(metric rows, progress, training state) and the checkpoint writes, against its wall time. Side by side,
in this process, the same spec trained by the bare Trainer with no callbacks (one torch thread, as the
worker has): the difference of the two wall times is a second, independent estimate of the overhead.
Target: < 5 % of the job's wall time.
"""

from __future__ import annotations

import argparse
import re
import sys
import tempfile
import time
import uuid
from pathlib import Path

import yaml

from alignahead.enums import ACTIVE

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "service"))  # the test suite's process helpers


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--backend", choices=("postgres", "embedded"), default="postgres")
    p.add_argument("--epochs", type=int, default=200)
    args = p.parse_args()

    import torch
    from fastapi.testclient import TestClient
    from svc_helpers import REDIS_URL, TEST_SECRET, Worker, embedded_settings, make_key, migrate
    from svc_helpers import temporary_postgres_database as pg_database

    from alignahead.datasets import load_dataset
    from alignahead.spec import JobSpec
    from alignahead.trainer import Trainer
    from service.api.app import create_app
    from service.core.settings import Settings

    torch.set_num_threads(1)
    folder = Path(tempfile.mkdtemp(prefix="overhead-"))
    raw = yaml.safe_load((ROOT / "examples" / "cora-gcn-alignahead.yaml").read_text())
    raw["training"].update(epochs=args.epochs, device="cpu")
    cora = (ROOT / raw["dataset"]["path"]).resolve()
    if not cora.is_file():
        print(f"{cora} not found: a synthetic graph of Cora's size instead")
        raw["dataset"] = {"name": "synthetic", "synthetic": {"num_nodes": 2708, "num_classes": 7,
                                                             "num_features": 1433, "avg_degree": 3.9}}  # fmt: skip

    with pg_database("alignahead_overhead") as pg_url:
        common = {"torch_threads": 1, "auth_secret": TEST_SECRET}
        if args.backend == "postgres":
            settings = Settings(database_url=pg_url, broker_url=REDIS_URL, queue_prefix=f"ov{uuid.uuid4().hex[:6]}.",
                                data_dir=str(folder / "data"), **common)  # fmt: skip
        else:
            settings = embedded_settings(folder, torch_threads=1)
        migrate(settings.database_url)
        worker = Worker(settings, folder / "worker.log", "overhead")
        try:
            worker.wait_ready()
            with TestClient(create_app(settings), headers={"Authorization": f"Bearer {make_key(settings, 'ov')}"}) as c:
                if raw["dataset"]["name"] == "npz":
                    files = {"file": ("cora.npz", cora.read_bytes(), "application/octet-stream")}
                    up = c.post("/v1/datasets", files=files).raise_for_status().json()
                    raw["dataset"] = {**up["dataset_spec"], "split": raw["dataset"]["split"]}
                job = c.post("/v1/jobs", json=raw).raise_for_status().json()
                while job["status"] in ACTIVE:
                    time.sleep(0.5)
                    job = c.get(f"/v1/jobs/{job['id']}").json()
            assert job["status"] == "succeeded", job
            line = next(ln for ln in worker.log().splitlines() if "outside training" in ln)
        finally:
            worker.stop()

    m = re.search(r"([\d.]+) s in the worker, ([\d.]+) s \(([\d.]+) %\) outside training: (.*)", line)
    assert m, line
    wall, outside, share, parts = float(m[1]), float(m[2]), float(m[3]), m[4]

    spec = JobSpec.model_validate({**raw, "dataset": yaml.safe_load((ROOT / "examples" / "cora-gcn-alignahead.yaml")
                                   .read_text())["dataset"]} if cora.is_file() else raw)  # fmt: skip
    t0 = time.perf_counter()
    dataset = load_dataset(spec.dataset, seed=spec.training.seed)
    Trainer(spec, dataset).run()
    bare = time.perf_counter() - t0

    print(f"overhead: {args.epochs}-epoch Cora job ({'real file' if cora.is_file() else 'synthetic'}), {args.backend}")
    print(f"worker wall time (claim to finish):      {wall:8.2f} s")
    print(f"outside training, as the worker counts:  {outside:8.2f} s  = {share:.1f} % of it  ({parts})")
    more = 100 * (wall - bare) / wall
    print(f"bare Trainer, no callbacks, this process: {bare:7.2f} s  -> the worker took {more:+.1f} % more "
          "(noisier: two runs, one machine)")  # fmt: skip
    return 0 if share < 5.0 else 1


if __name__ == "__main__":
    sys.exit(main())
