"""Session-wide test settings."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from alignahead.runtime import set_torch_threads


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
    import dgl
    import numpy as np
    import torch

    torch.manual_seed(0)
    np.random.seed(0)
    dgl.seed(0)
