"""`training.parallel: students`: a job's students in several processes give the one-process numbers.

Each parallel run here starts real processes (torch.multiprocessing, gloo on the CPU), so the graphs are
small and the runs short; every randomness is in play (minibatches of several graphs, dropout).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from pydantic import ValidationError

from alignahead import JobSpec
from alignahead.datasets import GraphDataset, load_dataset
from alignahead.kernels import compile_mode_set
from alignahead.parallel import Layout, RankFailed
from alignahead.trainer import Callbacks, Checkpoint, History, Trainer


def make_spec(parallel: bool, students: int = 2, tau: float | str = 10.0, **training) -> JobSpec:
    arch = ["gat", "gcn", "sage"]
    return JobSpec.model_validate(
        {
            "dataset": {
                "name": "synthetic",
                "synthetic": {"num_nodes": 60, "num_features": 8, "num_classes": 3, "num_graphs": 6},
            },
            "students": [
                {"arch": arch[i % 3], "hidden_layers": 2, "hidden_size": 8, "heads": 2, "dropout": 0.2}
                for i in range(students)
            ],
            "distillation": {"strategy": "alignahead", "tau": tau, "schedule": "simultaneous"},
            "training": {
                "epochs": 4,
                "lr": 0.01,
                "batch_size": 2,
                "device": "cpu",
                "seed": 5,
                **({"parallel": "students", "ranks": 2} if parallel else {}),
                **training,
            },
        }
    )


def as_float64(dataset: GraphDataset) -> GraphDataset:
    for graphs in (dataset.train, dataset.val, dataset.test):
        for g in graphs:
            if g.ndata["feat"].is_floating_point():
                g.ndata["feat"] = g.ndata["feat"].double()
            if g.ndata["label"].is_floating_point():
                g.ndata["label"] = g.ndata["label"].double()
    return dataset


def train(spec: JobSpec, float64: bool = False, **callbacks) -> tuple[list, Trainer]:
    """Every epoch row of a run, with compilation off (the ranks would each compile) and one thread."""
    before = torch.get_default_dtype(), torch.get_num_threads()
    dataset = load_dataset(spec.dataset, seed=spec.training.seed)
    if float64:
        torch.set_default_dtype(torch.float64)
        dataset = as_float64(dataset)
    torch.set_num_threads(1)
    history = History()
    try:
        with compile_mode_set("off"):
            trainer = Trainer(spec, dataset, Callbacks(on_epoch=history, **callbacks))
            trainer.run()
    finally:
        torch.set_default_dtype(before[0])
        torch.set_num_threads(before[1])
    return [{**r.__dict__, "seconds": 0} for r in history.rows], trainer


def test_alternating_is_refused_with_the_reason() -> None:
    with pytest.raises(ValidationError, match="alternating' schedule is sequential by definition"):
        JobSpec.model_validate(
            {
                "students": [{"count": 2}],
                "training": {"parallel": "students"},
                "distillation": {"schedule": "alternating"},
            }
        )
    with pytest.raises(ValidationError, match="more than the 2 students"):
        make_spec(True, ranks=3)


def test_students_are_split_in_contiguous_groups() -> None:
    assert [list(Layout(5, 2).owned(r)) for r in range(2)] == [[0, 1, 2], [3, 4]]
    assert [list(Layout(4, 4).owned(r)) for r in range(4)] == [[0], [1], [2], [3]]
    assert Layout(5, 2).largest == 3


def test_two_ranks_give_the_one_process_losses_in_float32() -> None:
    one, _ = train(make_spec(False))
    two, trainer = train(make_spec(True))
    assert trainer.group is not None and trainer.group._closed
    assert [(r["epoch"], r["student"]) for r in two] == [(r["epoch"], r["student"]) for r in one]
    for a, b in zip(one, two, strict=True):
        for key in ("loss", "task_loss", "distill_loss"):
            assert b[key] == pytest.approx(a[key], rel=1e-5), (a, b)
    assert one[0]["distill_loss"] > 0 and one[0]["loss"] != one[1]["loss"]


def test_uneven_groups_give_identical_numbers_in_float64_with_auto_tau() -> None:
    # three students on two ranks (two and one), each student's bandwidth exchanged with its distributions
    one, _ = train(make_spec(False, students=3, tau="auto"), float64=True)
    two, _ = train(make_spec(True, students=3, tau="auto"), float64=True)
    assert two == one


def test_a_resumed_parallel_run_and_its_checkpoints_match_the_one_process_run() -> None:
    spec = make_spec(True, epochs=5)
    whole, _ = train(make_spec(False, epochs=5))
    dataset = load_dataset(spec.dataset, seed=spec.training.seed)
    torch.set_num_threads(1)
    first, second = History(), History()
    got: list[Checkpoint] = []
    with compile_mode_set("off"):
        part = Trainer(spec, dataset, Callbacks(on_epoch=first))
        part.run(stop_after=2)
        state = part.state_bytes()  # gathered from both ranks
        part.close()
        resumed = Trainer(spec, dataset, Callbacks(on_epoch=second, on_checkpoint=got.append))
        resumed.load_state_bytes(state)  # sent to the other rank
        resumed.run()
    rows = [{**r.__dict__, "seconds": 0} for r in first.rows + second.rows]
    for a, b in zip(whole, rows, strict=True):
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-5)
    finals = sorted((c.student, c.epoch) for c in got if c.kind == "final")
    assert finals == [(0, 5), (1, 5)]  # student 1's from rank 1


def test_cancel_stops_every_rank_within_the_epoch() -> None:
    spec = make_spec(True)
    steps = -(-len(load_dataset(spec.dataset, seed=spec.training.seed).train) // spec.training.batch_size)
    asked = []

    def should_cancel() -> bool:  # asked once per step: yes on the second epoch's first step
        asked.append(1)
        return len(asked) > steps

    rows, trainer = train(spec, should_cancel=should_cancel)
    assert [r["epoch"] for r in rows] == [1, 1]
    assert trainer.epoch == 1 and trainer.group is not None and trainer.group._closed
    assert all(not p.is_alive() for p in trainer.group.children.processes)


def test_a_killed_rank_ends_the_run_with_a_clear_error_and_no_hang(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ALIGNAHEAD_PARALLEL_TIMEOUT_SECONDS", "60")  # a bound, should the failure go unseen
    holder: list[Trainer] = []
    steps = []

    def kill_mid_epoch() -> bool:
        steps.append(1)
        if len(steps) == 5:  # second epoch, second step
            holder[0].group.children.processes[0].kill()
            holder[0].group.children.processes[0].join()
        return False

    spec = make_spec(True)
    dataset = load_dataset(spec.dataset, seed=spec.training.seed)
    with compile_mode_set("off"):
        trainer = Trainer(spec, dataset, Callbacks(should_cancel=kill_mid_epoch))
        holder.append(trainer)
        with pytest.raises(RankFailed, match=r"rank 1 \(students 1-1\) ended with signal SIGKILL"):
            trainer.run()
    assert trainer.group is not None and trainer.group._closed
    assert not torch.distributed.is_initialized()


def test_two_nodes_on_the_loopback_through_a_c10d_rendezvous(tmp_path: Path) -> None:
    """What an operator runs on each machine (README): torchrun with one c10d endpoint, here two 'nodes'
    on this machine. Rank 0 writes the run folder; its rows equal the one-process CLI run's, and so do those
    of the CLI starting its own ranks."""
    spec = make_spec(True).model_dump(mode="json")
    (tmp_path / "parallel.json").write_text(json.dumps(spec))
    spec["training"].update(parallel="none", ranks=None)
    (tmp_path / "one.json").write_text(json.dumps(spec))
    # faulthandler: should a rank crash, its output shows every thread's Python stack
    env = {**os.environ, "ALIGNAHEAD_COMPILE": "off", "OMP_NUM_THREADS": "1", "PYTHONFAULTHANDLER": "1"}
    cli = [sys.executable, "-m", "alignahead.cli", "train", "--quiet", "--threads", "1"]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    # the rendezvous store lives here, longer than either node (as the README advises): a node that
    # hosted it would close it on leaving, and the other's agent then fails its own shutdown (exit 1)
    store = dist.TCPStore("127.0.0.1", port, is_master=True, wait_for_workers=False)
    nodes = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "torch.distributed.run",
                "--nnodes",
                "2",
                "--nproc-per-node",
                "1",
                "--rdzv-backend",
                "c10d",
                "--rdzv-endpoint",
                f"127.0.0.1:{port}",
                "--rdzv-id",
                "test-job",
                "--rdzv-conf",
                "is_host=false",
                "--max-restarts",
                "0",
                "--module",
                "alignahead.cli",
                *cli[3:],
                str(tmp_path / "parallel.json"),
                "--out",
                str(tmp_path / f"node{n}"),
            ],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )  # fmt: skip
        for n in range(2)
    ]
    subprocess.run([*cli, str(tmp_path / "one.json"), "--out", str(tmp_path / "one")], env=env, check=True)
    spawned = subprocess.run(
        [*cli, str(tmp_path / "parallel.json"), "--out", str(tmp_path / "spawned")],
        env=env,
        capture_output=True,
        text=True,
    )
    assert spawned.returncode == 0, spawned.stdout + spawned.stderr
    assert "outputs in" in spawned.stdout  # printed before the process ends without teardown
    for node in nodes:
        out, _ = node.communicate(timeout=300)
        assert node.returncode == 0, out
    del store  # both nodes are gone
    written = [tmp_path / f"node{n}" / "metrics.jsonl" for n in range(2) if (tmp_path / f"node{n}").exists()]
    assert len(written) == 1, "exactly one node holds rank 0"
    read = lambda p: [json.loads(line) for line in p.read_text().splitlines()]  # noqa: E731
    one = read(tmp_path / "one" / "metrics.jsonl")
    for other in (read(written[0]), read(tmp_path / "spawned" / "metrics.jsonl")):
        assert [(r["epoch"], r["student"]) for r in other] == [(r["epoch"], r["student"]) for r in one]
        for a, b in zip(one, other, strict=True):
            assert b["loss"] == pytest.approx(a["loss"], rel=1e-5)
