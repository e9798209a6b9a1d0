"""HetLoRA-style baseline (Cho et al., "Heterogeneous LoRA for federated fine-tuning of
on-device foundation models", 2024): LoRA of a different rank per family, aggregated
across families by zero-padding and truncation.

The server keeps one padded global LoRA at the largest rank. A family of rank r_f
receives it truncated: lora_A[:r_f, :] and lora_B[:, :r_f]. Replies are zero-padded back
to the largest rank and averaged by sample count over every client that has the tensor
(a layer that only deeper backbones have is averaged over those); the classifier head is
averaged over all clients. Not implemented from the paper: its rank self-pruning and its
sparsity-weighted aggregation (plain sample weights here). Tensors must agree in every
dimension but the rank, so families must share their hidden size.

Message contract: the per-family one (``fedavg_per_family/strategy.py``).
"""

from __future__ import annotations

import numpy as np

from strategies.aggregate import weighted_mean
from strategies.fedavg_per_family.strategy import ACCUMULATE, FamilyFedAvg, Reply, Tensors

RANK_AXIS = {"lora_A": 0, "lora_B": 1}


def rank_axis(name: str) -> int | None:
    parts = name.split(".")
    return next((axis for marker, axis in RANK_AXIS.items() if marker in parts), None)


def padded(name: str, value: np.ndarray, rank: int) -> np.ndarray:
    axis = rank_axis(name)
    if axis is None or value.shape[axis] == rank:
        return value
    widths = [(0, 0)] * value.ndim
    widths[axis] = (0, rank - value.shape[axis])
    return np.pad(value, widths)


def truncated(name: str, value: np.ndarray, rank: int) -> np.ndarray:
    axis = rank_axis(name)
    return value if axis is None else np.take(value, range(rank), axis=axis)


class HetLoRA(FamilyFedAvg):
    def __init__(self, *, ranks: dict[str, int], **kwargs) -> None:
        self.ranks, self.max_rank = ranks, max(ranks.values())
        super().__init__(**kwargs)

    def split_models(self, models: dict[str, Tensors]) -> tuple[dict[str, Tensors], Tensors]:
        """Everything is shared (padded to the largest rank); a name's initial value comes
        from the highest-rank family that has it."""
        shared: Tensors = {}
        for family in sorted(models, key=lambda f: self.ranks[f]):
            for name, value in models[family].items():
                wide = padded(name, value, self.max_rank)
                if name in shared and shared[name].shape != wide.shape:
                    raise ValueError(f"hetlora: '{name}' is {value.shape} in family '{family}' "
                                     f"but {shared[name].shape} elsewhere; hetlora needs "
                                     "families of equal hidden size")
                shared[name] = wide
        self.layouts = {f: sorted(t) for f, t in models.items()}
        return {f: {} for f in models}, shared

    def family_model(self, family: str) -> Tensors:
        return {n: truncated(n, self.shared[n], self.ranks[family]) for n in self.layouts[family]}

    def combine_shared(self, groups: dict[str, list[Reply]], server_round: int) -> None:
        replies = [r for family_replies in groups.values() for r in family_replies]
        for name in self.shared:
            having = [r for r in replies if name in r.tensors]
            if having:
                self.shared[name] = weighted_mean(
                    [{name: padded(name, r.tensors[name], self.max_rank)} for r in having],
                    [r.num_examples for r in having], ACCUMULATE)[name]
