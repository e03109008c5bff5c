"""Session-wide test settings."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
from graphs import HAS_DGL

from alignahead.runtime import set_torch_threads

# The kernels run eager in tests (and in the workers that tests start, which inherit the environment):
# compiling them costs about a minute per process. Tests of the compiled kernels turn it on themselves.
os.environ.setdefault("ALIGNAHEAD_COMPILE", "off")


@pytest.fixture(scope="session", autouse=True)
def one_torch_thread_per_process() -> Iterator[None]:
    """The test process trains too, beside worker processes on 2 shared cores: oversubscribed torch
    threads spin and make small trainings many times slower."""
    import torch

    before = torch.get_num_threads()
    set_torch_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(autouse=True)
def seeded_generators() -> None:
    """Every test starts from the same global random state, whatever ran before it: a test that draws
    without its own generator sees the same numbers in every run and in any order."""
    import numpy as np
    import torch

    torch.manual_seed(0)
    np.random.seed(0)
    if HAS_DGL:  # the oracle tests draw graphs with DGL's own generator too
        from alignahead.graph import import_dgl

        import_dgl().seed(0)
