"""The memory of one training step, counted by what each byte holds.

The process's resident set (``ru_maxrss``) is dominated by the Python and torch runtime
and cannot be reset between cells; a GPU would report ``torch.cuda.max_memory_allocated``.
On CPU, torch's memory profiler follows every tensor allocation and free of a profiled
step and labels each tensor (parameter, gradient, optimizer state, activation, ...).
It is reached through ``profile.export_memory_timeline`` (deprecated since torch 2.7 in
favour of ``torch.cuda.memory._record_memory_history``, which is CUDA only; no CPU
replacement exists). The static parts are also counted from the tensors themselves, and
``step_memory`` refuses a profile whose counts disagree with them.
"""

from __future__ import annotations

import json
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

# The columns of export_memory_timeline's JSON: an unused 0, then torch's categories in
# the order of torch.profiler._memory_profiler._CATEGORY_TO_INDEX.
COLUMNS = ("unused", "parameter", "optimizer_state", "input", "temporary", "activation",
           "gradient", "autograd_detail", "unknown")
MIB = 2**20


@dataclass(frozen=True)
class StepMemory:
    """MiB of one forward, backward and AdamW step, at the moment the total peaks."""

    weights: float  # every parameter, frozen and trainable
    gradients: float
    optimizer: float  # AdamW's two moments
    activations: float  # what the forward keeps for the backward, temporaries included
    trainable: int  # trainable parameters
    seconds: float  # the same step, unprofiled

    @property
    def total(self) -> float:
        return self.weights + self.gradients + self.optimizer + self.activations

    @property
    def training_state(self) -> float:
        """What training adds to holding the model for inference."""
        return self.total - self.weights


def _bytes(tensors) -> float:
    return sum(t.numel() * t.element_size() for t in tensors) / MIB


def step_memory(model: nn.Module, step) -> StepMemory:
    """``step(model, optimizer)`` runs one training step (loss, backward, optimizer.step);
    it is run twice: profiled from a fresh optimizer, then timed."""
    model.train()
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=1e-5)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU],
                                profile_memory=True, record_shapes=True,
                                with_stack=True) as profile:
        step(model, optimizer)
    with tempfile.TemporaryDirectory() as folder, warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        path = Path(folder) / "timeline.json"
        profile.export_memory_timeline(str(path), device="cpu")
        _, sizes = json.loads(path.read_text())
    peak = dict(zip(COLUMNS, max(sizes, key=sum), strict=True))
    counted = {"parameter": _bytes(model.parameters()),
               "gradient": _bytes(p.grad for p in trainable if p.grad is not None),
               "optimizer_state": _bytes(v for state in optimizer.state.values()
                                         for v in state.values() if v.dim() > 0)}
    final = dict(zip(COLUMNS, sizes[-1], strict=True))
    for column, mib in counted.items():
        if abs(final[column] / MIB - mib) > 0.01 * mib + 0.1:
            raise RuntimeError(f"the memory profile's {column} ({final[column] / MIB:.1f} MiB) "
                               f"is not the tensors' own count ({mib:.1f} MiB)")
    optimizer.zero_grad(set_to_none=True)
    started = time.perf_counter()
    step(model, optimizer)
    seconds = time.perf_counter() - started
    optimizer.zero_grad(set_to_none=True)
    rest = sum(peak[c] for c in ("input", "temporary", "activation", "autograd_detail",
                                 "unknown"))
    return StepMemory(peak["parameter"] / MIB, peak["gradient"] / MIB,
                      peak["optimizer_state"] / MIB, rest / MIB,
                      sum(p.numel() for p in trainable), seconds)
