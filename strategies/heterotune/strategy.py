"""HeteroTune (arXiv 2411.16796): DeMA adapters federated across backbone families, with
cross-model gradient alignment. No public code; this is ../shared/docs/methods.md §3.

Tensors: DeMA's expert banks (``banks.*``: experts and gates) are shared by every family;
the down/up projections and the classifier head stay within their family
(``pollen/dema``). Family-specific tensors are averaged within the family by sample
count. The shared update, per round:

    u_f     = sum_{k in f} (n_k / n_f) (w_k - w_sent)       each family's mean update
    CMGA    for f in families, for g in the others in a seeded random order:
                if <u_f', u_g> < 0:  u_f' <- u_f' - <u_f', u_g> / ||u_g||^2 u_g
            (PCGrad: projections against the other families' original updates)
    shared <- shared + sum_f (n_f / n) u_f'

``heterotune.cmga = false`` skips the projection (the ablation): the shared tensors are then the
sample-weighted mean over all clients. Inner products are over the whole flattened shared
vector. Logged each round: ``cmga_conflict_fraction``, the share of family pairs whose
updates had a negative inner product before projection.

Message contract: the per-family one (``fedavg_per_family/strategy.py``).
"""

from __future__ import annotations

import random
from logging import INFO

import numpy as np
from flwr.common.logger import log

from pollen.dema.model import is_shared
from pollen.seeding import derive_seed
from strategies.fedavg_per_family.strategy import FamilyFedAvg, Reply, Tensors


def flatten(tensors: Tensors, names: list[str]) -> np.ndarray:
    return np.concatenate([tensors[n].astype(np.float64).ravel() for n in names])


def conflict_fraction(updates: list[np.ndarray]) -> float:
    """The share of pairs of updates with a negative inner product."""
    pairs = [(i, j) for i in range(len(updates)) for j in range(i + 1, len(updates))]
    return sum(float(updates[i] @ updates[j]) < 0 for i, j in pairs) / len(pairs) if pairs else 0.0


def cmga(updates: list[np.ndarray], order_seed: int) -> list[np.ndarray]:
    """PCGrad-style projections of each update against the others it conflicts with."""
    rng = random.Random(order_seed)
    projected = []
    for i, update in enumerate(updates):
        aligned = update.copy()
        others = [j for j in range(len(updates)) if j != i]
        rng.shuffle(others)
        for j in others:
            dot = float(aligned @ updates[j])
            norm_sq = float(updates[j] @ updates[j])
            if dot < 0 and norm_sq > 0:
                aligned -= dot / norm_sq * updates[j]
        projected.append(aligned)
    return projected


class HeteroTune(FamilyFedAvg):
    def __init__(self, *, use_cmga: bool, **kwargs) -> None:
        self.use_cmga = use_cmga
        super().__init__(**kwargs)

    def summary(self) -> None:
        log(INFO, "\t├──> HeteroTune: %d shared DeMA tensors, CMGA %s", len(self.shared),
            "on" if self.use_cmga else "off (ablation)")
        super().summary()

    def split_models(self, models: dict[str, Tensors]) -> tuple[dict[str, Tensors], Tensors]:
        first = models[sorted(models)[0]]
        shared = {n: v for n, v in first.items() if is_shared(n)}
        for family, tensors in models.items():
            names = {n for n in tensors if is_shared(n)}
            if names != set(shared) or any(tensors[n].shape != shared[n].shape for n in names):
                raise ValueError(f"family '{family}' has other shared DeMA tensors than "
                                 f"'{sorted(models)[0]}': dema-rank, dema-experts, "
                                 "dema-banks and dema-target-modules must be the same")
        return ({f: {n: v for n, v in t.items() if not is_shared(n)}
                 for f, t in models.items()}, shared)

    def combine_shared(self, groups: dict[str, list[Reply]], server_round: int) -> None:
        names = sorted(self.shared)
        families = sorted(groups)
        sizes = np.array([sum(r.num_examples for r in groups[f]) for f in families], float)
        updates = []
        for family in families:
            replies = groups[family]
            weights = (np.array([r.num_examples for r in replies], float)
                       / sizes[families.index(family)])
            updates.append(sum(w * (flatten(r.tensors, names) - flatten(r.sent, names))
                               for w, r in zip(weights, replies)))
        self.family_metrics["cmga_conflict_fraction"] = conflict_fraction(updates)
        if self.use_cmga:
            updates = cmga(updates, derive_seed(self.seed, "cmga", server_round))
        step = sum((n / sizes.sum()) * u for n, u in zip(sizes, updates))
        offset = 0
        for name in names:
            size = self.shared[name].size
            self.shared[name] = (self.shared[name].astype(np.float64)
                                 + step[offset:offset + size].reshape(self.shared[name].shape)
                                 ).astype(np.float32)
            offset += size
