"""The clients' local optimiser, from the run config's ``optimizer``, ``momentum`` and
``weight-decay`` (``RunConfig.local_optimizer``).

AdamW is the LoRA fine-tuning default (peft's and FlowerTune's); plain SGD is what the
official FedMerge, Mosaic and FedRef code trains with (``torch.optim.SGD`` without
momentum). Either is built fresh for every local training: no optimiser state survives
a round, as in those codebases and in Flower's examples.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pollen.config holds one; reading a config needs no torch
    import torch


@dataclass(frozen=True)
class LocalOptimizer:
    name: str = "adamw"  # "adamw" | "sgd"
    momentum: float = 0.0  # sgd only
    weight_decay: float = 0.0

    def build(self, params: Iterable[torch.nn.Parameter], lr: float) -> torch.optim.Optimizer:
        import torch

        if self.name == "sgd":
            return torch.optim.SGD(params, lr=lr, momentum=self.momentum,
                                   weight_decay=self.weight_decay)
        if self.name == "adamw":
            return torch.optim.AdamW(params, lr=lr, weight_decay=self.weight_decay)
        raise ValueError(f"unknown optimizer '{self.name}'; choose one of: adamw, sgd")
