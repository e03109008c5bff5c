"""`training.parallel: students`: the students of one job in several processes, one device each.

In the simultaneous schedule the students' forwards and backwards are independent except for what
they exchange: each student's detached distributions of the peer layers, one float per edge and
layer pair per step. So each rank (a process, with one device: a CPU slot or a GPU) trains a
contiguous group of the students, and on every step the ranks `all_gather` those distributions.
Everything else that decides the numbers is the same in every rank and in the one-process run: the
students' initial weights (every rank builds all k from the seed, keeps its own), the batch order
(one shuffle generator per rank, seeded alike) and dropout (one random stream per student,
alignahead.trainer.StudentRandomness). So a parallel run gives the one-process run's numbers.

Rank 0 is the leader: it is the caller's process (the CLI, a service worker), runs the callbacks
(metric rows, checkpoints, cancellation) and tells the other ranks, the followers, what to do next
with a `Command` (an epoch, the final checkpoints, load a state, send their state, end). Followers
are started here with torch.multiprocessing (spawn), or by torchrun on other machines
(`RankGroup.from_environment`). Every collective has the process group's timeout, and a rank that
dies makes the others' collectives fail: the leader then stops every follower and raises `RankFailed`.
"""

from __future__ import annotations

import io
import logging
import os
import signal
import sys
import time
from dataclasses import dataclass, field
from datetime import timedelta
from typing import TYPE_CHECKING, Any, NoReturn

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from alignahead.runtime import RuntimeSettings

if TYPE_CHECKING:
    from alignahead.datasets import GraphDataset
    from alignahead.spec import JobSpec

log = logging.getLogger("alignahead.parallel")


class RankFailed(RuntimeError):
    """A rank of a parallel job died or timed out; the attempt is over (its saved state is intact)."""


@dataclass(frozen=True)
class Layout:
    """Which students each rank trains: contiguous groups, the first `k % ranks` one student larger."""

    students: int
    ranks: int

    def owned(self, rank: int) -> range:
        base, extra = divmod(self.students, self.ranks)
        start = rank * base + min(rank, extra)
        return range(start, start + base + (1 if rank < extra else 0))

    @property
    def largest(self) -> int:
        return -(-self.students // self.ranks)


def devices_here(device_type: str) -> int:
    """Devices this machine offers to ranks: its GPUs, or the CPU cores this process may run on."""
    if device_type == "cuda":
        return torch.cuda.device_count()
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def ranks_for(spec: JobSpec, devices: int) -> int:
    """`training.ranks`, else one rank per student up to `devices`; 1 when the job is not parallel."""
    t = spec.training
    if t.parallel == "none":
        return 1
    return t.ranks if t.ranks is not None else max(1, min(spec.num_students, devices))


@dataclass
class Command:
    """What the leader tells the followers to do next."""

    kind: str  # "epoch" | "final" | "load" | "state" | "end"
    checkpoints: bool = False  # whether the leader stores checkpoints (owners make their bytes)
    last_vals: list[float | None] | None = None  # "final": the last evaluation's val scores
    state: bytes | None = None  # "load": the training state


@dataclass
class Exchanged:
    """One step's exchange: every student's tensor (its peer-layer distributions) and whether to stop."""

    tensors: list[torch.Tensor]
    stop: bool


@dataclass
class RankGroup:
    """This process's rank in the job's process group, and the collectives the trainer uses."""

    rank: int
    layout: Layout
    device: torch.device
    children: Any = None  # the leader's torch.multiprocessing ProcessContext of local followers
    collective_seconds: float = 0.0  # time inside collectives (waiting for the other ranks, moving data)
    _closed: bool = field(default=False, repr=False)

    @property
    def leader(self) -> bool:
        return self.rank == 0

    @property
    def owned(self) -> range:
        return self.layout.owned(self.rank)

    # --- starting ---------------------------------------------------------------------------

    @classmethod
    def start(cls, spec: JobSpec, dataset: GraphDataset, ranks: int, device: torch.device) -> RankGroup:
        """The leader of a new group on this machine: starts ranks 1.. as spawned processes and joins them
        in a process group (gloo on the CPU, nccl on CUDA) through a TCP store on the loopback."""
        from alignahead.kernels import compile_mode

        layout = Layout(spec.num_students, ranks)
        if device.type == "cuda" and torch.cuda.device_count() < ranks:
            raise ValueError(
                f"{ranks} ranks need {ranks} CUDA devices, one each; this machine has {torch.cuda.device_count()} "
                "(lower training.ranks)"
            )
        timeout = timedelta(seconds=RuntimeSettings().parallel_timeout_seconds)
        store = dist.TCPStore("127.0.0.1", 0, ranks, is_master=True, timeout=timeout, wait_for_workers=False)
        setup = _FollowerSetup(
            spec_json=spec.model_dump_json(),
            port=store.port,
            layout=layout,
            device_type=device.type,
            threads=torch.get_num_threads(),
            compile=compile_mode(),
            timeout_s=timeout.total_seconds(),
            dtype=str(torch.get_default_dtype()).removeprefix("torch."),
        )
        children = mp.start_processes(
            _follow, args=(setup, dataset), nprocs=ranks - 1, join=False, daemon=True, start_method="spawn"
        )
        group = cls(0, layout, _rank_device(device.type, 0), children)
        try:
            group._join(store, timeout)
        except Exception as e:
            group.close(abort=True)
            raise RankFailed(f"the parallel job's ranks did not start: {e}") from e
        return group

    @classmethod
    def from_environment(cls, spec: JobSpec, device_type: str) -> RankGroup:
        """This process's rank as torchrun started it (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR/PORT from
        its c10d rendezvous): the same job across machines, one process per rank on each."""
        rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
        if spec.training.ranks not in (None, world):
            raise ValueError(f"training.ranks is {spec.training.ranks} but torchrun started {world} processes")
        if world > spec.num_students:
            raise ValueError(f"torchrun started {world} processes for {spec.num_students} students; at most one each")
        device = _rank_device(device_type, int(os.environ.get("LOCAL_RANK", 0)))
        timeout = timedelta(seconds=RuntimeSettings().parallel_timeout_seconds)
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group(_backend(device), init_method="env://", rank=rank, world_size=world, timeout=timeout)
        return cls(rank, Layout(spec.num_students, world), device)

    def _join(self, store: dist.Store, timeout: timedelta) -> None:
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)
        dist.init_process_group(
            _backend(self.device), store=store, rank=self.rank, world_size=self.layout.ranks, timeout=timeout
        )

    # --- collectives ------------------------------------------------------------------------

    def exchange(self, mine: list[torch.Tensor], stop: bool) -> Exchanged:
        """All-gather this rank's students' tensors (one per owned student, the same shape on every rank)
        and a stop flag (any rank's): every student's tensor, in student order."""
        shape = mine[0].shape
        size = mine[0].numel()
        flat = torch.zeros(self.layout.largest * size + 1, dtype=mine[0].dtype, device=self.device)
        for slot, t in enumerate(mine):
            flat[slot * size : (slot + 1) * size] = t.reshape(-1)
        flat[-1] = float(stop)
        parts = [torch.empty_like(flat) for _ in range(self.layout.ranks)]
        self._guard(dist.all_gather, parts, flat)
        tensors = []
        for rank, part in enumerate(parts):
            for slot in range(len(self.layout.owned(rank))):
                tensors.append(part[slot * size : (slot + 1) * size].view(shape))
        return Exchanged(tensors, any(bool(p[-1]) for p in parts))

    def everyone(self, mine: dict[int, Any]) -> dict[int, Any]:
        """Every rank's {student: value}, merged (all_gather_object)."""
        parts: list[Any] = [None] * self.layout.ranks
        self._guard(dist.all_gather_object, parts, mine)
        return {i: v for part in parts for i, v in part.items()}

    def to_leader(self, mine: list[Any]) -> list[Any]:
        """Every rank's list, concatenated in rank order, at the leader ([] elsewhere)."""
        parts: list[Any] | None = [None] * self.layout.ranks if self.leader else None
        self._guard(dist.gather_object, mine, parts, dst=0)
        return [x for part in parts for x in part] if parts is not None else []

    def tell(self, command: Command) -> None:
        """Leader: send the followers their next command."""
        self._guard(dist.broadcast_object_list, [command], src=0)

    def receive(self) -> Command:
        """Follower: wait for the leader's next command."""
        box: list[Any] = [None]
        self._guard(dist.broadcast_object_list, box, src=0)
        return box[0]

    def _guard(self, collective: Any, *args: Any, **kwargs: Any) -> None:
        t0 = time.perf_counter()
        try:
            collective(*args, **kwargs)
        except (RuntimeError, dist.DistError) as e:
            raise RankFailed(self._failure(e)) from e
        finally:
            self.collective_seconds += time.perf_counter() - t0

    def _failure(self, error: BaseException) -> str:
        """Why a collective failed, naming the ranks that are gone where this process started them."""
        gone = []
        if self.children is not None:
            for i, p in enumerate(self.children.processes):
                p.join(timeout=2)
                if p.exitcode is not None:
                    code = p.exitcode
                    how = f"signal {signal.Signals(-code).name}" if code < 0 else f"exit code {code}"
                    students = self.layout.owned(i + 1)
                    gone.append(f"rank {i + 1} (students {students.start}-{students.stop - 1}) ended with {how}")
        where = "; ".join(gone) if gone else f"rank {self.rank}: {error}"
        return f"a rank of the parallel job failed, so this attempt stops: {where}"

    # --- ending -----------------------------------------------------------------------------

    def close(self, abort: bool = False) -> None:
        """End the group: the leader tells the followers to end and waits for them (`abort`: kills them),
        then leaves the process group."""
        if self._closed:
            return
        self._closed = True
        if self.leader and not abort:
            try:
                self.tell(Command("end"))
            except RankFailed:
                abort = True
        if self.children is not None:
            for p in self.children.processes:
                if abort and p.is_alive():
                    p.kill()
                p.join(timeout=30)
                if p.is_alive():
                    p.kill()
                    p.join()
        if dist.is_initialized():
            dist.destroy_process_group()  # no barrier: after an abort the peers are gone


@dataclass(frozen=True)
class _FollowerSetup:
    spec_json: str
    port: int
    layout: Layout
    device_type: str
    threads: int
    compile: str
    timeout_s: float
    dtype: str  # the default dtype the students are built in (float64 runs)


def _backend(device: torch.device) -> str:
    return "nccl" if device.type == "cuda" else "gloo"


def _rank_device(device_type: str, index: int) -> torch.device:
    return torch.device("cuda", index) if device_type == "cuda" else torch.device("cpu")


def _follow(index: int, setup: _FollowerSetup, dataset: GraphDataset) -> None:
    """A spawned follower (rank index + 1): join the group, build the trainer, obey the leader."""
    from alignahead.kernels import set_compile_mode
    from alignahead.spec import JobSpec
    from alignahead.trainer import Trainer

    torch.set_num_threads(setup.threads)
    torch.set_default_dtype(getattr(torch, setup.dtype))
    set_compile_mode(setup.compile)  # type: ignore[arg-type]
    rank = index + 1
    timeout = timedelta(seconds=setup.timeout_s)
    store = dist.TCPStore("127.0.0.1", setup.port, setup.layout.ranks, is_master=False, timeout=timeout)
    group = RankGroup(rank, setup.layout, _rank_device(setup.device_type, rank))
    group._join(store, timeout)
    Trainer(JobSpec.model_validate_json(setup.spec_json), dataset, group=group).follow()


def end_rank_process(code: int) -> NoReturn:
    """End a rank's process (the CLI's) once its group is closed and its outputs are written, skipping the
    interpreter's teardown. There gloo's threads may still be winding down: in 2 of 93 runs of the
    two-node test here a rank then aborted ('terminate called without an active exception', SIGABRT)
    after its work had ended (pytorch/pytorch#179291 describes the same crash at finalization), its
    torchrun failed, and the other machines' torchrun waited out the elastic exit barrier and failed too."""
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def state_bytes(obj: Any) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()
