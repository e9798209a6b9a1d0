"""The DeMA layer: a frozen linear layer plus a dense mixture of shared experts.

    h' = W h + (alpha / r) U_f( sum_k g_k(z) E_k z ),   z = D_f h,   g(z) = softmax(G z)

D_f: d_f -> r and U_f: r -> d_f belong to the backbone family (U_f starts at zero, so the
pretrained function is unchanged at initialisation); the experts E_1..E_K: r -> r and the
gate G: r -> K live in an ``ExpertBank`` shared by every family. Every expert is active
for every token (a dense mixture, no routing).

Not in the paper, which gives no scale or initialisation (#19): the output scale alpha / r
is LoRA's, and each expert starts near the identity (I plus a tenth of nn.Linear's
initial weights, different per expert so that they do not stay identical), so at
initialisation DeMA is a rank-r LoRA, U_f D_f, with LoRA's gain. With nn.Linear's
initialisation and no scale the mixture of K random experts shrank the adapter's output
to about 0.28 of LoRA's 1 and the scale 2 was missing, a ~7x smaller step.

Written by hand: peft's tuners (LoRA and its mixtures such as X-LoRA) keep every adapter
tensor in the width of the layer it adapts, so nothing could be shared between backbones
of different hidden sizes; here only D_f and U_f depend on the width.
"""

from __future__ import annotations

import math

import torch
from torch import nn


class ExpertBank(nn.Module):
    """K shared r x r experts and the dense gate, for one target module at one depth."""

    def __init__(self, rank: int, experts: int) -> None:
        super().__init__()
        self.experts = nn.Parameter(torch.empty(experts, rank, rank))
        self.gate = nn.Parameter(torch.zeros(experts, rank))
        for k in range(experts):  # I + 0.1 x nn.Linear's default initialisation
            nn.init.kaiming_uniform_(self.experts.data[k], a=math.sqrt(5))
        self.experts.data.mul_(0.1).add_(torch.eye(rank))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        weights = torch.softmax(z @ self.gate.T, dim=-1)  # (..., K)
        mixed = torch.einsum("kor,...r->...ko", self.experts, z)  # (..., K, r)
        return torch.einsum("...k,...ko->...o", weights, mixed)


class DemaLinear(nn.Module):
    """A frozen ``nn.Linear`` with its family's projections around a shared bank."""

    def __init__(self, base: nn.Linear, bank: ExpertBank, rank: int, scale: float) -> None:
        super().__init__()
        self.base, self.scale = base, scale
        self.down = nn.Linear(base.in_features, rank, bias=False)
        self.up = nn.Linear(rank, base.out_features, bias=False)
        nn.init.kaiming_uniform_(self.down.weight, a=math.sqrt(5))
        nn.init.zeros_(self.up.weight)
        # A plain attribute, not a submodule: the bank's parameters are registered once, in
        # the model's ``banks`` (shared tensors), not once per layer that uses them.
        self.__dict__["bank"] = bank

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.base(h) + self.scale * self.up(self.bank(self.down(h)))
