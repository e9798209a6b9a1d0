"""HeteroTune (arXiv 2411.16796): DeMA adapters federated across backbone families, with
cross-model gradient alignment. No public code; this is ../shared/docs/methods.md §3, with
the changes #19 asked for (below).

Shared tensors: DeMA's expert banks (``banks.*``: experts and gates) and, with
``heterotune.layer-alignment = absolute`` (the default), also the projections D/U of every
layer index that families hold with the same shape (families of equal width: MiniLM-L2,
-L4 and -L6 share all their DeMA tensors for layers 0-1, L4 and L6 those of 2-3 too). A
tensor is shared by the families that hold it; a name held with different shapes (other
widths) stays within each family. The classifier head and, with ``relative`` alignment
(methods.md: banks by relative depth), D/U are family tensors, averaged within the family
by sample count. The shared update, per round:

    u_f     = sum_{k in f} (n_k / n_f) (w_k - w_sent)       each family's mean update
    CMGA    per unit (each shared tensor with ``heterotune.cmga-granularity = tensor``, or
            all of them with ``vector``), for f among the unit's holders, for g among the
            others in a seeded random order, over the tensors both hold:
                if <u_f', u_g> < 0:  u_f' <- u_f' - <u_f', u_g> / ||u_g||^2 u_g
            (PCGrad: projections against the other families' original updates)
    shared  t <- t + sum_{f holds t} (n_f / sum_{g holds t} n_g) u_f'[t]

Per tensor is #19's reading: one 1,152-number vector across every bank let the largest
tensors decide every projection. ``heterotune.cmga = false`` skips the projection (the
ablation). Logged each round: ``cmga_conflict_fraction``, the share of (unit, family
pair) with a negative inner product before projection, and ``cmga_cosines``, the mean
cosine of each family pair's updates over the units both hold.

Where we go beyond methods.md (our choices, #19): sharing D/U between families of equal
width needs their coordinates aligned, so every DeMA tensor is seeded by its place
(``pollen/dema/model.py``), not by family; and the absolute layer index pairs layer l of
prefix models with the same pretrained layer, where relative depth paired layer 1 of a
2-layer model with layer 3 of a 6-layer one.

#19's target (per-family FedAvg + 0.02 on the family mean, + 0.05 on the smallest family,
AG News, MiniLM-L2/L4/L6) is missed (docs/benchmarks.md section 8): with the mean-pooling
head per-family FedAvg of LoRA is a strong baseline, and sharing every DeMA tensor of the
common layers made the smallest family neither better nor steadier over 3 seeds. Tried:
absolute alignment with shared D/U, alpha/r scaling with near-identity experts, CMGA per
tensor (its logged cosines: minilm-l2 | minilm-l4 positive, 0.2-0.4; the full model's
pairs near 0).

On SmolLM2's depth families (``smollm2-l10``/``-l20``: the first 10/20 of 30 decoder
layers under the model's own norm and head, the issue's example) it loses to per-family
FedAvg beyond one std (section 9 of docs/benchmarks.md, 3 seeds: family mean 0.143 +-
0.050 against 0.352 +- 0.034): a prefix is not a working language model before training,
smollm2-l10 never answers a label under HeteroTune (0.24-0.26 trained alone), and the
shared DeMA tensors of the common layers carry the short families' updates into the full
model, whose exact match fell from the base's 0.345 to 0.12 after a round in which only
smollm2-l10 clients trained (seed 0). Dropping middle layers instead (the first and
last N/2 kept, or offsite-tuning's uniform drop between the first and last 2) gives no
working model either:
all score 0 before training, with response losses of 8-10 nats at 20 layers and 15-16 at
10 against the full model's 1.2, the prefixes' 25 and 34 (``python -m bench.llm
depth-layouts``). They start closer, but whether they train better is not measured; Pollen
builds only the prefixes.

Across architectures (#34: ``model-families = minilm,smollm2``, task classify): banks are
keyed by attention role (``pollen.dema.model.ROLES``), so MiniLM's query/value layers and
SmolLM2's q_proj/v_proj share experts and its k_proj/o_proj banks are held by SmolLM2
alone; ``layer-alignment = auto`` aligns such families by relative depth (an encoder's
layer l and a decoder's have nothing in common), so D/U and the heads stay per family.
methods.md shares experts "at the same relative depth" without naming which projections
pair up; pairing by role is our reading.

Do no harm (#34, ``heterotune.family-gate``, on by default). Sharing pays only if no
family ends below what it would reach alone, so each round every family that trained has
two candidates for the shared tensors it holds: the shared step above (``base_f + step``)
and its own step alone (``base_f + u_f``, what per-family FedAvg gives those tensors).
The round's evaluation sends both to the family's clients (those sampled by
``fraction-evaluate`` and those that trained this round) and each reports the validation
loss of both on its local test split; the family keeps the shared step unless its own
gives the lower example-weighted loss, in which case it keeps its own tensors, from then
on as its own copy of the shared ones (it still takes later shared steps that pass the
gate). Logged per round as ``family_gate`` (family -> ``shared``, ``own``, or
``unmeasured`` when no client of the family answered: the shared step is kept) and
``family_gate_losses`` (family -> [shared, own]). A family whose gate fires every round
is per-family FedAvg on those tensors. What it costs: one more evaluation of the family
model on each client's local test split per round, and the evaluate messages carry the
own candidate besides the model (twice the evaluate download); when it fires, that family
forgoes the others' updates for the round. The gate is our construction (the paper has
none); it reads the clients' local test splits, which Pollen otherwise only reports.

Message contract: the per-family one (``fedavg_per_family/strategy.py``); with the gate,
an evaluate message may carry ArrayRecord ``family-own`` (the family's model after its
own step, the names of ``arrays``), and its reply then reports ``eval_own_loss``.
"""

from __future__ import annotations

import random
from collections.abc import Iterable
from logging import INFO, WARNING

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord
from flwr.common.logger import log
from flwr.serverapp import Grid

from pollen.dema.model import is_projection, is_shared
from pollen.records import to_array_record
from pollen.seeding import derive_seed
from strategies.base import StrategyState, metrics_of, prefixed, unprefixed
from strategies.fedavg_per_family.strategy import ACCUMULATE, FamilyFedAvg, Reply, Tensors
from strategies.validation import metric_problem

OWN_KEY = "family-own"  # evaluate messages: the family's model after its own step alone
OWN_LOSS = "eval_own_loss"
DETACHED = "detached"  # state: a gated family's own copy of the shared tensors it holds


def conflicts_and_cosines(updates: dict[str, Tensors], units: list[list[str]]
                          ) -> tuple[float, dict[str, float]]:
    """The share of (unit, family pair) whose updates have a negative inner product, and
    each pair's mean cosine over the units both hold."""
    negative, pairs, cosines = 0, 0, {}
    families = sorted(updates)
    for unit in units:
        for i, f in enumerate(families):
            for g in families[i + 1:]:
                common = [n for n in unit if n in updates[f] and n in updates[g]]
                if not common:
                    continue
                dot = sum(float(np.vdot(updates[f][n], updates[g][n])) for n in common)
                norms = (sum(float(np.vdot(updates[f][n], updates[f][n])) for n in common)
                         * sum(float(np.vdot(updates[g][n], updates[g][n])) for n in common))
                pairs += 1
                negative += dot < 0
                if norms > 0:
                    cosines.setdefault(f"{f}|{g}", []).append(dot / np.sqrt(norms))
    return (negative / pairs if pairs else 0.0,
            {pair: float(np.mean(values)) for pair, values in cosines.items()})


def cmga(updates: dict[str, Tensors], units: list[list[str]], order_seed: int
         ) -> dict[str, Tensors]:
    """PCGrad-style projections of each family's update against the others it conflicts
    with, unit by unit, over the tensors both hold."""
    rng = random.Random(order_seed)
    aligned = {f: {n: u.copy() for n, u in tensors.items()} for f, tensors in updates.items()}
    for unit in units:
        for f in sorted(updates):
            others = [g for g in sorted(updates) if g != f]
            rng.shuffle(others)
            for g in others:
                common = [n for n in unit if n in updates[f] and n in updates[g]]
                dot = sum(float(np.vdot(aligned[f][n], updates[g][n])) for n in common)
                norm_sq = sum(float(np.vdot(updates[g][n], updates[g][n])) for n in common)
                if dot < 0 and norm_sq > 0:
                    for n in common:
                        aligned[f][n] -= dot / norm_sq * updates[g][n]
    return aligned


class HeteroTune(FamilyFedAvg):
    def __init__(self, *, use_cmga: bool, per_tensor: bool, share_projections: bool,
                 family_gate: bool = True, **kwargs) -> None:
        self.use_cmga, self.per_tensor = use_cmga, per_tensor
        self.share_projections = share_projections
        self.family_gate = family_gate
        # Families whose gate has fired: their own copy of the shared tensors they hold.
        self.detached: dict[str, Tensors] = {}
        # This round, per family that trained: its shared tensors after its own step.
        self.own_step: dict[str, Tensors] = {}
        super().__init__(**kwargs)

    def summary(self) -> None:
        log(INFO, "\t├──> HeteroTune: %d shared DeMA tensors (%s), CMGA %s", len(self.shared),
            ", ".join(f"{f}: {len(self.holds[f])}" for f in self.families),
            ("per tensor" if self.per_tensor else "over the whole vector") if self.use_cmga
            else "off (ablation)")
        log(INFO, "\t├──> family gate: %s", "on" if self.family_gate else "off")
        super().summary()

    def split_models(self, models: dict[str, Tensors]) -> tuple[dict[str, Tensors], Tensors]:
        """Shared: the bank tensors (and, with shared projections, the DeMA projections)
        that every family holding them holds with one shape; the rest per family."""
        candidates = {n for t in models.values() for n in t
                      if is_shared(n) or (self.share_projections and is_projection(n))}
        shared = {}
        for name in sorted(candidates):
            holders = [f for f in sorted(models) if name in models[f]]
            if len({models[f][name].shape for f in holders}) == 1:
                shared[name] = models[holders[0]][name]
            elif is_shared(name):
                raise ValueError(f"families {holders} hold shared DeMA tensor '{name}' with "
                                 "different shapes: dema-rank, dema-experts and "
                                 "dema-target-modules must be the same")
        self.holds = {f: sorted(n for n in shared if n in t) for f, t in models.items()}
        return ({f: {n: v for n, v in t.items() if n not in shared}
                 for f, t in models.items()}, shared)

    def shared_of(self, family: str) -> Tensors:
        """The shared tensors the family holds, as it holds them (its own copy once its
        gate has fired)."""
        return self.detached.get(family) or {n: self.shared[n] for n in self.holds[family]}

    def family_model(self, family: str) -> Tensors:
        return {**self.family_tensors[family], **self.shared_of(family)}

    def combine_shared(self, groups: dict[str, list[Reply]], server_round: int) -> None:
        sizes = {f: float(sum(r.num_examples for r in replies)) for f, replies in groups.items()}
        updates = {}
        for family, replies in groups.items():
            updates[family] = {n: sum((r.num_examples / sizes[family])
                                      * (r.tensors[n].astype(ACCUMULATE) - r.sent[n])
                                      for r in replies)
                               for n in self.holds[family]}
        self.own_step = {f: {n: (v.astype(ACCUMULATE) + updates[f][n]).astype(np.float32)
                             for n, v in self.shared_of(f).items()}
                         for f in updates} if self.family_gate else {}
        units = [[n] for n in sorted(self.shared)] if self.per_tensor else [sorted(self.shared)]
        conflict, cosines = conflicts_and_cosines(updates, units)
        self.family_metrics.update(cmga_conflict_fraction=conflict, cmga_cosines=cosines)
        if self.use_cmga:
            updates = cmga(updates, units, derive_seed(self.seed, "cmga", server_round))
        for name in self.shared:
            holders = [f for f in updates if name in updates[f]]
            if not holders:
                continue
            total = sum(sizes[f] for f in holders)
            step = sum((sizes[f] / total) * updates[f][name] for f in holders)
            for tensors in [self.shared, *self.detached.values()]:
                if name in tensors:
                    tensors[name] = (tensors[name].astype(ACCUMULATE) + step).astype(np.float32)

    def configure_evaluate(self, server_round: int, arrays: ArrayRecord,
                           config: ConfigRecord, grid: Grid) -> Iterable[Message]:
        """Flower's evaluate sample; with the gate, also every client that trained this
        round, and each message carries its family's own candidate."""
        messages = list(super().configure_evaluate(server_round, arrays, config, grid))
        if not self.own_step:
            return messages
        sampled = {m.metadata.dst_node_id for m in messages}
        messages += self._messages(server_round, arrays, config,
                                   [n for n in self.sent if n not in sampled],
                                   MessageType.EVALUATE)
        for message in messages:
            family = self._family_of_node(message.metadata.dst_node_id)
            if family in self.own_step:
                message.content[OWN_KEY] = to_array_record(
                    {**self.family_tensors[family], **self.own_step[family]})
        return messages

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]
                           ) -> MetricRecord | None:
        replies = list(replies)
        metrics = super().aggregate_evaluate(server_round, replies)
        if self.own_step:
            self.gate(replies)
        return metrics

    def gate(self, replies: list[Message]) -> None:
        """Each trained family keeps the candidate with the lower example-weighted loss on
        its clients' local test splits (the module docstring)."""
        losses: dict[str, np.ndarray] = {}
        for reply in replies:
            if reply.has_error() or metric_problem(reply.content, self.weighted_by_key):
                continue
            metrics = metrics_of(reply)
            if OWN_LOSS not in metrics or "eval_loss" not in metrics:
                continue
            pair = np.array([float(metrics["eval_loss"]), float(metrics[OWN_LOSS]), 1.0])
            if not np.isfinite(pair).all():
                continue  # one client's broken loss does not decide for its family
            family = self._family_of_node(reply.metadata.src_node_id)
            losses[family] = (losses.get(family, np.zeros(3))
                              + float(metrics[self.weighted_by_key]) * pair)
        decisions, measured = {}, {}
        for family, own in self.own_step.items():
            if family not in losses or losses[family][2] <= 0:
                decisions[family] = "unmeasured"
                log(WARNING, "family gate: no client of %s reported both losses; it keeps "
                    "the shared step", family)
                continue
            shared_loss, own_loss = losses[family][:2] / losses[family][2]
            measured[family] = [float(shared_loss), float(own_loss)]
            decisions[family] = "own" if own_loss < shared_loss else "shared"
            if decisions[family] == "own":
                self.detached[family] = own
                log(INFO, "family gate: %s keeps its own step (validation loss %.4f, "
                    "shared step %.4f)", family, own_loss, shared_loss)
        self.own_step = {}
        self.family_metrics.update(family_gate=decisions, family_gate_losses=measured)
        self.global_arrays = to_array_record(self.flat())

    def flat(self) -> Tensors:
        tensors = super().flat()
        for family, own in self.detached.items():
            tensors.update(prefixed(own, f"{DETACHED}/{family}/"))
        return tensors

    def load_state_dict(self, state: StrategyState) -> None:
        super().load_state_dict(state)
        flat = unprefixed(state["tensors"], "global/")
        self.detached = {f: own for f in self.families
                         if (own := unprefixed(flat, f"{DETACHED}/{f}/"))}
