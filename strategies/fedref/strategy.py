"""FedRef (Yoon, Choi, De Neve, arXiv 2506.23210): methods.md §5, with the official code's
warm-up and reference window (TaehwanY98/Fed-Ref, server/FedRefServer.py).

Warm-up: the first p rounds are plain FedAvg (no pull, no reference sent), as the official
code's ``server_round < p + 1`` branch, so that the untrained initial model never enters
the reference.

Reference model of round r > p: a recency-weighted mean of the last p *aggregated* models
(FedAvg's w_agg of rounds r-p .. r-1, before any pull), the newest weighted p and the
oldest 1, over Phi = p (p + 1) / 2:

    w_ref(r) = sum_{i=1..p} (p - i + 1) / Phi * w_agg(r - i).

``fedref.reference-weights = uniform`` takes methods.md's plain mean over the same window
instead. Where we differ from the official code: its ``RefWeights`` gives the weights 1..p
to queue slots, and ``RefWeights.update`` (which would move the largest weight to the newest
slot) is never called, so its weights rotate with the slot index rather than follow
recency; we take the recency order the class was written for. The official reference also
includes the current round's aggregate; ours is the one the clients were sent this round
(rounds before r), so client and server pull towards the same model.

Server step, after FedAvg's w_agg: the MAP estimate under a Gaussian prior centred on the
reference,

    w_new = argmin_w ||w - w_agg||^2 + lambda ||w - w_ref||^2 = (w_agg + lambda w_ref) / (1 + lambda).

The official code instead corrects only in rounds where the weighted client loss rose by
more than a threshold, with one gradient step on lambda ||dtheta_g - dtheta_ref||^2 per
layer; methods.md asks for the closed form, which is what this class does.

Client step (``fedref.client-prox``, on by default; not in the official clients, which
train plain SGD): CE + (mu/2) ||w - w_ref||^2, the proximal term towards the reference
rather than the last global. The reference travels in the train message as ArrayRecord
``reference`` (so bytes_down counts it) with ``proximal-mu`` = fedref.mu in the config;
``client.py`` is the client half.

Logged after the warm-up: ``fedref_objective`` = sum_k p_k F_k + lambda ||w_new - w_ref||^2,
with F_k client k's mean training loss and p_k its share of the examples (our reading of
the paper's loss-weighted L_ref), and ``fedref_reference_distance`` = ||w_new - w_ref||.

Message contract: the shared one (``strategies/base.py``); after the warm-up, with the
client proximal term on, the train config's ``proximal-mu`` (float) and the ArrayRecord
``reference`` (same names and shapes as ``arrays``): the client adds (mu/2)||w - w_ref||^2.
The reply's ``train_loss`` is required (the objective uses it).
"""

from __future__ import annotations

from collections.abc import Iterable
from logging import INFO

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.common.logger import log
from flwr.serverapp import Grid

from pollen.records import from_array_record, to_array_record
from strategies.base import PollenStrategy, StrategyState, prefixed, unprefixed
from strategies.fedref.client import REFERENCE_KEY
from strategies.fedref.config import FedRefConfig

Tensors = dict[str, np.ndarray]


DEFAULTS = FedRefConfig()


class FedRef(PollenStrategy):
    """Flower's FedAvg keywords, and FedRef's with the defaults of
    ``[tool.flwr.app.config.fedref]``: ``p``, ``lam`` (lambda), ``client_mu`` (mu, 0 when
    client-prox is off) and ``recency_weighted`` (reference-weights = recency).

    A plain Flower ClientApp works with it: the server step (warm-up, reference, MAP
    pull) is whole; the client's pull towards the reference needs one line in its
    training loop (``strategies.ProximalTerm``), and without it is lost (``client_mu=0``
    says so explicitly)."""

    def __init__(self, *, p: int = DEFAULTS.p, lam: float = DEFAULTS.lambda_,
                 client_mu: float = DEFAULTS.mu if DEFAULTS.client_prox else 0.0,
                 recency_weighted: bool = DEFAULTS.reference_weights == "recency",
                 **kwargs) -> None:
        super().__init__(**kwargs)
        if p < 1 or lam < 0 or client_mu < 0:
            raise ValueError(f"FedRef needs p >= 1, lambda >= 0, mu >= 0; got p={p}, "
                             f"lambda={lam}, mu={client_mu}")
        self.p, self.lam, self.client_mu = p, lam, client_mu
        self.recency_weighted = recency_weighted
        self.aggregates: list[Tensors] = []  # FedAvg's w_agg of the last p rounds, oldest first

    def begin(self, initial_arrays: ArrayRecord) -> None:
        super().begin(initial_arrays)
        self.aggregates = []

    def summary(self) -> None:
        log(INFO, "\t├──> FedRef: p %d (%s reference, plain FedAvg for the first %d rounds), "
            "lambda %g, client mu %g%s", self.p,
            "recency-weighted" if self.recency_weighted else "uniform", self.p, self.lam,
            self.client_mu, "" if self.client_mu > 0 else " (client proximal term off)")
        super().summary()

    def warming_up(self) -> bool:
        return len(self.aggregates) < self.p

    def reference(self) -> Tensors:
        """w_ref over the window of aggregates (the module docstring), in float64 and
        rounded to float32 once."""
        weights = (np.arange(1, self.p + 1, dtype=np.float64) if self.recency_weighted
                   else np.ones(self.p))
        weights /= weights.sum()
        return {name: sum(w * g[name].astype(np.float64)
                          for w, g in zip(weights, self.aggregates)).astype(np.float32)
                for name in self.aggregates[0]}

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        pulls = self.client_mu > 0 and not self.warming_up()
        if pulls:
            config["proximal-mu"] = self.client_mu
        messages = list(super().configure_train(server_round, arrays, config, grid))
        if pulls:
            reference = to_array_record(self.reference())
            for message in messages:
                message.content[REFERENCE_KEY] = reference
        return messages

    def aggregate_train(self, server_round: int, replies: Iterable[Message]
                        ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        arrays, metrics = super().aggregate_train(server_round, replies)
        if arrays is None:
            return None, metrics
        aggregated = from_array_record(arrays)
        if not self.warming_up():
            reference = self.reference()
            new = {name: ((aggregated[name] + self.lam * reference[name]) / (1.0 + self.lam))
                   .astype(np.float32) for name in aggregated}
            self.global_arrays = to_array_record(new)
            distance_sq = float(sum(np.sum((new[k].astype(np.float64) - reference[k]) ** 2)
                                    for k in new))
            if "train_loss" in metrics:  # a client that reports no loss has no objective
                metrics["fedref_objective"] = (float(metrics["train_loss"])
                                               + self.lam * distance_sq)
            metrics["fedref_reference_distance"] = float(np.sqrt(distance_sq))
        self.aggregates = (self.aggregates + [aggregated])[-self.p:]
        return self.global_arrays, metrics

    def state_dict(self) -> StrategyState:
        state = super().state_dict()
        for i, model in enumerate(self.aggregates):
            state["tensors"].update(prefixed(model, f"aggregates/{i}/"))
        state["meta"]["aggregates"] = len(self.aggregates)
        return state

    def load_state_dict(self, state: StrategyState) -> None:
        super().load_state_dict(state)
        self.aggregates = [unprefixed(state["tensors"], f"aggregates/{i}/")
                           for i in range(state["meta"]["aggregates"])]
