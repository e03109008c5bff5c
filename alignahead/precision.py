"""`training.precision`: the students' layers under autocast, their losses scaled where fp16 needs it.

Only the students' forwards run in low precision (their matrix products are where it pays). The
local structure, its KL and the task loss are computed in float32 (alignahead.structure widens the
hidden layers it reads; the trainer widens the logits), and so are the sums of messages over a
node's in-edges (alignahead.layers). fp16 has too few exponent bits for small gradients, so each
student's backward goes through a `torch.amp.GradScaler`; bf16 needs none.
"""

from __future__ import annotations

import contextlib
from contextlib import AbstractContextManager

import torch

from alignahead.spec import Precision

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
LOW = (torch.float16, torch.bfloat16)


def widen(x: torch.Tensor) -> torch.Tensor:
    """`x` in float32 if it is in a 16-bit float type, else unchanged (float64 stays float64)."""
    return x.float() if x.dtype in LOW else x


class Mixed:
    """The autocast context for the students' forwards and one grad scaler per student's optimizer."""

    def __init__(self, precision: Precision, device: torch.device, students: int) -> None:
        if precision == "fp16" and device.type != "cuda":
            raise ValueError("training.precision 'fp16' needs a CUDA device; on the CPU use 'bf16' or 'fp32'")
        self.precision, self.device = precision, device
        self.dtype = DTYPES[precision]
        fp16 = precision == "fp16"
        self.scalers = [torch.amp.GradScaler(device.type, enabled=fp16) for _ in range(students)]

    def autocast(self) -> AbstractContextManager:
        if self.precision == "fp32":
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.dtype)

    def step(self, index: int, loss: torch.Tensor, optimizer: torch.optim.Optimizer) -> None:
        """Backward and optimiser step for student `index` (through its scaler; a no-op scaler unless fp16)."""
        scaler = self.scalers[index]
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()

    def state_dict(self) -> list[dict]:
        return [s.state_dict() for s in self.scalers]

    def load_state_dict(self, states: list[dict]) -> None:
        for scaler, state in zip(self.scalers, states, strict=True):
            if state:
                scaler.load_state_dict(state)
