"""The clients' local optimiser, from the run config's ``optimizer``, ``momentum`` and
``weight-decay`` (``RunConfig.local_optimizer``).

AdamW is the LoRA fine-tuning default (peft's and FlowerTune's); plain SGD is what the
official FedMerge, Mosaic and FedRef code trains with (``torch.optim.SGD`` without
momentum). Either is built fresh for every local training: no optimiser state survives
a round, as in those codebases and in Flower's examples.

``head-lr-scale`` multiplies the lr of the classifier head (``pollen.adapters.is_head``);
0 keeps the head at its initial values during local training, FedBABU's recipe (Oh et
al., ICLR 2022): under label skew a client that holds mostly one class then cannot
move the shared decision boundary towards it, only the features.
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
    head_lr_scale: float = 1.0

    def build(self, named_params: Iterable[tuple[str, torch.nn.Parameter]], lr: float
              ) -> torch.optim.Optimizer:
        """The optimiser over ``named_params`` (the trainable ones), the head's at
        ``lr * head_lr_scale``; a frozen head (scale 0) is left out of it."""
        import torch

        from pollen.adapters import is_head

        body, head = [], []
        for name, param in named_params:
            (head if is_head(name) else body).append(param)
        groups = [{"params": body, "lr": lr}]
        if head and self.head_lr_scale > 0:
            groups.append({"params": head, "lr": lr * self.head_lr_scale})
        if self.name == "sgd":
            return torch.optim.SGD(groups, lr=lr, momentum=self.momentum,
                                   weight_decay=self.weight_decay)
        if self.name == "adamw":
            return torch.optim.AdamW(groups, lr=lr, weight_decay=self.weight_decay)
        raise ValueError(f"unknown optimizer '{self.name}'; choose one of: adamw, sgd")
