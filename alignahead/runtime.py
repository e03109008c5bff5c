"""Process-wide runtime settings of the library, read from the environment in this one place.

None of them changes what is trained, only how fast, with how much memory, or where data is kept:
- ALIGNAHEAD_TORCH_THREADS (unset: torch's default, one thread per core). On a machine that runs
  several trainings at once, oversubscribed threads make epochs many times slower (measured: 24.5 s
  against 5.6 s for the same CLI run on a loaded 2-core machine); one thread per process is right there.
  Applied by `set_torch_threads`, which the CLI (`--threads`) and the service's workers call.
- ALIGNAHEAD_COMPILE (auto | on | off, default auto): which kernels of message passing and of the local
  structure run compiled by torch.compile (alignahead.kernels): `auto` those measured to pay on the
  device (every one on CUDA; the edge distance on the CPU), `on` all, `off` none. A compiled kernel is
  checked against the eager one on first use and falls back to it with one log line.
- ALIGNAHEAD_REUSE_FORWARD_MB (default 256): in the alternating schedule on one-graph data, for
  students without dropout, the forward that refreshes a student's targets may be run with gradient
  and kept as that student's next training forward: one forward less per student per epoch, with
  identical numbers, for k - 1 students' activations held at once. It is done where that costs at
  most this many MiB (what autograd saves in its first training forward); 0 never does it.
- ALIGNAHEAD_PARALLEL_TIMEOUT_SECONDS (default 300): the process-group timeout of a parallel job
  (`training.parallel: students`): a collective that waits longer for a rank (dead, frozen) fails,
  so a lost rank never hangs the others.
- ALIGNAHEAD_DATA_DIR (default ~/.cache/alignahead/datasets): where downloaded datasets are kept.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import torch
from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class RuntimeSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="ALIGNAHEAD_", extra="ignore")

    torch_threads: int | None = Field(
        None, ge=1, le=1024, description="torch CPU threads per process; unset: torch's default (all cores)."
    )
    compile: Literal["auto", "on", "off"] = Field(
        "auto",
        description="torch.compile for the message-passing and local-structure kernels: 'auto' where measured to "
        "pay (all on CUDA, the edge distance on the CPU), 'on' all, 'off' none (eager CSR kernels).",
    )
    reuse_forward_mb: float = Field(
        256.0,
        ge=0.0,
        description="Alternating schedule, one graph, no dropout: keep each refresh forward as the student's next "
        "training forward (one forward less per student per epoch) where the k - 1 activations held cost at most "
        "this many MiB; 0: never.",
    )
    parallel_timeout_seconds: float = Field(
        300.0,
        gt=0,
        description="Process-group timeout of a parallel job: a collective that waits longer for a rank fails.",
    )
    data_dir: Path = Field(
        Path.home() / ".cache" / "alignahead" / "datasets",
        description="Where built-in datasets are downloaded to and read from.",
    )


def set_torch_threads(threads: int | None = None) -> int:
    """Apply `threads`, else ALIGNAHEAD_TORCH_THREADS, else leave torch's default; returns the count in use."""
    if threads is None:
        threads = RuntimeSettings().torch_threads
    if threads is not None:
        if threads < 1:
            raise ValueError(f"torch threads must be at least 1 (got {threads})")
        torch.set_num_threads(threads)
    return torch.get_num_threads()
