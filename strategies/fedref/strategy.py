"""FedRef (Yoon, Choi, De Neve, arXiv 2506.23210), as ../shared/docs/methods.md §5 reads it.

Reference model: w_ref(r) = mean of the last p global models (the initial model counts,
so in the first rounds the mean is over the fewer models that exist).

Server step, after FedAvg's w_agg: the MAP estimate under a Gaussian prior centred on the
reference,

    w_new = argmin_w ||w - w_agg||^2 + lambda ||w - w_ref||^2 = (w_agg + lambda w_ref) / (1 + lambda).

Client step (``fedref.client-prox``, on by default): CE + (mu/2) ||w - w_ref||^2, the
proximal term towards the reference rather than the last global. The reference travels
in the train message as ArrayRecord ``reference`` (so bytes_down counts it) with
``proximal-mu`` = fedref.mu in the config; ``client.py`` is the client half.

Logged each round: ``fedref_objective`` = sum_k p_k F_k + lambda ||w_new - w_ref||^2, with
F_k client k's mean training loss and p_k its share of the examples (our reading of the
paper's loss-weighted L_ref), and ``fedref_reference_distance`` = ||w_new - w_ref||.

Message contract: the shared one (``strategies/base.py``); with the client proximal term
on, the train config's ``proximal-mu`` (float) and the ArrayRecord ``reference`` (same
names and shapes as ``arrays``): the client adds (mu/2)||w - w_ref||^2. The reply's
``train_loss`` is required (the objective uses it).

Where the official code differs: server/FedRefServer.py of TaehwanY98/Fed-Ref weights
the window by recency ((rho - i + 1) / Phi), corrects only in rounds where the weighted
client loss rose by more than a threshold delta, and then takes one gradient step on
lambda ||dtheta_g - dtheta_ref||^2 instead of the closed-form MAP step. methods.md asks for
the plain mean and the closed form, which is what this class does; the official rule is
not implemented.
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

Tensors = dict[str, np.ndarray]


class FedRef(PollenStrategy):
    def __init__(self, *, p: int, lam: float, client_mu: float, **kwargs) -> None:
        super().__init__(**kwargs)
        if p < 1 or lam < 0 or client_mu < 0:
            raise ValueError(f"FedRef needs p >= 1, lambda >= 0, mu >= 0; got p={p}, "
                             f"lambda={lam}, mu={client_mu}")
        self.p, self.lam, self.client_mu = p, lam, client_mu
        self.history: list[Tensors] = [from_array_record(self.global_arrays)]

    def summary(self) -> None:
        log(INFO, "\t├──> FedRef: p %d, lambda %g, client mu %g%s", self.p, self.lam,
            self.client_mu, "" if self.client_mu > 0 else " (client proximal term off)")
        super().summary()

    def reference(self) -> Tensors:
        window = self.history[-self.p:]
        # numpy's mean (sum, then / p): the 1/p-weighted sum of ``aggregate`` rounds
        # differently, and a FedRef run would no longer repeat its earlier results.
        return {name: np.mean([g[name] for g in window], axis=0, dtype=np.float64)
                .astype(np.float32) for name in window[0]}

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        if self.client_mu > 0:
            config["proximal-mu"] = self.client_mu
        messages = list(super().configure_train(server_round, arrays, config, grid))
        if self.client_mu > 0:
            reference = to_array_record(self.reference())
            for message in messages:
                message.content[REFERENCE_KEY] = reference
        return messages

    def aggregate_train(self, server_round: int, replies: Iterable[Message]
                        ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        reference = self.reference()
        arrays, metrics = super().aggregate_train(server_round, replies)
        if arrays is None:
            return None, metrics
        aggregated = from_array_record(arrays)
        new = {name: ((aggregated[name] + self.lam * reference[name]) / (1.0 + self.lam))
               .astype(np.float32) for name in aggregated}
        self.global_arrays = to_array_record(new)
        self.history = (self.history + [new])[-self.p:]
        distance_sq = float(sum(np.sum((new[k].astype(np.float64) - reference[k]) ** 2)
                                for k in new))
        metrics["fedref_objective"] = float(metrics["train_loss"]) + self.lam * distance_sq
        metrics["fedref_reference_distance"] = float(np.sqrt(distance_sq))
        return self.global_arrays, metrics

    def state_dict(self) -> StrategyState:
        state = super().state_dict()
        for i, model in enumerate(self.history):
            state["tensors"].update(prefixed(model, f"history/{i}/"))
        state["meta"]["history_length"] = len(self.history)
        return state

    def load_state_dict(self, state: StrategyState) -> None:
        super().load_state_dict(state)
        self.history = [unprefixed(state["tensors"], f"history/{i}/")
                        for i in range(state["meta"]["history_length"])]
