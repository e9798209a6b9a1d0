"""Remedies screened by ``bench.labelskew grid`` that have no run-config key (#36).

Each screen is a grid row: run-config overrides plus a patch of Pollen's code that holds
for the cell's run (the grid runs the server and every client in its own process,
``bench.common.run_in_process``, so the patch reaches both).
A screen is a measurement, not a product path: a remedy that holds on the grid becomes a
key; one that does not stays here with its numbers (docs/benchmarks.md section 7).

- ``class-balanced-aggregation``: FedAvg's weights are w_i = sum_c n_ic / N_c (n_ic
  client i's train examples of class c, N_c the round's total), so every class carries
  the same total weight: the binary grid's one-class clients of the majority class no
  longer outweigh those of the minority. The weights are computed from each client's
  split on the server's side (a product version would need each client's label counts
  in its reply).
- ``fedavgm``: FedAvgM (Hsu et al., 2019, who measured it at Dirichlet alpha -> 0):
  v <- beta v + (mean - global), global <- global + v, beta 0.9, server lr 1; the
  clients train as ``sgd-momentum`` does.
- ``fedadam-0.01`` / ``fedadam-0.03``: FedAdam (Reddi et al., ICLR 2021, "Adaptive
  Federated Optimization"), Flower's arithmetic (``flwr.serverapp.strategy.FedAdam``:
  beta1 0.9, beta2 0.99, tau 1e-3, its bias-corrected eta) at server lr eta 0.01 / 0.03
  on the mean of the clients' deltas; the clients train with plain SGD (lr 'auto', 0.05),
  whose local steps are proportional to their gradients, so the mean of one-class
  clients' deltas is close to the gradient of their union, and the server's Adam step
  restores AdamW's speed on that mean.
- ``adamw-eps-0.03`` / ``adamw-eps-0.01``: AdamW with epsilon 0.03 / 0.01 (torch's
  default 1e-8). Its step is lr m / (sqrt(v) + eps): normalised where gradients are
  larger than eps, as today's default, and SGD-like (lr / eps times the gradient's
  moving average) where they are smaller, so a one-class client's steps shrink once its
  loss does.
- ``skewed-eps-0.03``: ``adamw-eps-0.03`` for a client whose train split is at least 90%
  one class, today's AdamW for every other: the large epsilon damps the clients whose
  scale-free steps carry the average to their class, and leaves the mixed clients,
  whose speed the easier cells need, as they are. A client reads its own label counts
  (FedLC's calibration does too), so a product version needs no new message.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Iterator

import numpy as np

SGD_MOMENTUM = {"optimizer": "sgd", "momentum": 0.9, "lr": 0.01}


@contextlib.contextmanager
def _class_balanced_aggregation(keys: dict, num_clients: int) -> Iterator[None]:
    import strategies.base as base
    from pollen.data import client_split, load_task
    from pollen.training import label_counts
    from strategies import run_config

    config = run_config(keys)
    task = load_task(config)
    counts = np.array([label_counts(client_split(task, config, i, num_clients)[0],
                                    task.num_classes) for i in range(num_clients)], float)
    weights = list((counts / np.maximum(counts.sum(0), 1)).sum(1))
    mean = base.weighted_mean

    def balanced(models, given, dtype=np.float32):
        if len(models) != num_clients:  # fraction-train 1.0: every client replies
            raise RuntimeError(f"{len(models)} replies, {num_clients} clients")
        return mean(models, weights, dtype)

    base.weighted_mean = balanced
    try:
        yield
    finally:
        base.weighted_mean = mean


@contextlib.contextmanager
def _server_step(step: Callable[[int, str, np.ndarray], np.ndarray]) -> Iterator[None]:
    """FedAvg's aggregation followed by a server optimiser: the new global of each tensor
    is old + step(round, name, mean - old), ``step`` keeping its own state."""
    import strategies.base as base
    from pollen.records import from_array_record, to_array_record

    aggregate = base.PollenStrategy.aggregate_train

    def stepped(self, server_round, replies):
        before = {k: np.array(v) for k, v in from_array_record(self.global_arrays).items()}
        arrays, metrics = aggregate(self, server_round, replies)
        if arrays is None:
            return arrays, metrics
        mean = from_array_record(arrays)
        self.global_arrays = to_array_record({
            name: (old + step(server_round, name, mean[name] - old)).astype(np.float32)
            for name, old in before.items()})
        return self.global_arrays, metrics

    base.PollenStrategy.aggregate_train = stepped
    try:
        yield
    finally:
        base.PollenStrategy.aggregate_train = aggregate


def _fedavgm(keys: dict, num_clients: int, beta: float = 0.9, server_lr: float = 1.0
             ) -> contextlib.AbstractContextManager:
    velocity: dict[str, np.ndarray] = {}

    def momentum(server_round: int, name: str, delta: np.ndarray) -> np.ndarray:
        velocity[name] = beta * velocity.get(name, 0.0) + delta
        return server_lr * velocity[name]

    return _server_step(momentum)


def _fedadam(keys: dict, num_clients: int, eta: float, beta_1: float = 0.9,
             beta_2: float = 0.99, tau: float = 1e-3) -> contextlib.AbstractContextManager:
    first: dict[str, np.ndarray] = {}
    second: dict[str, np.ndarray] = {}

    def adam(server_round: int, name: str, delta: np.ndarray) -> np.ndarray:
        eta_norm = (eta * np.sqrt(1 - beta_2 ** (server_round + 1.0))
                    / (1 - beta_1 ** (server_round + 1.0)))
        first[name] = beta_1 * first.get(name, 0.0) + (1 - beta_1) * delta
        second[name] = beta_2 * second.get(name, 0.0) + (1 - beta_2) * delta ** 2
        return eta_norm * first[name] / (np.sqrt(second[name]) + tau)

    return _server_step(adam)


@contextlib.contextmanager
def _adamw_eps(keys: dict, num_clients: int, eps: float) -> Iterator[None]:
    import torch

    init = torch.optim.AdamW.__init__

    @functools.wraps(init)
    def with_eps(self, params, *args, **kwargs):
        init(self, params, *args, **{**kwargs, "eps": eps})

    torch.optim.AdamW.__init__ = with_eps
    try:
        yield
    finally:
        torch.optim.AdamW.__init__ = init


@contextlib.contextmanager
def _skewed_eps(keys: dict, num_clients: int, eps: float, share: float = 0.9
                ) -> Iterator[None]:
    import client_app.app as client

    train = client.train_model

    def train_model(model, loader, **kwargs):
        counts = np.bincount(np.asarray(loader.dataset["label"]))
        if counts.max() < share * counts.sum():
            return train(model, loader, **kwargs)
        with _adamw_eps(keys, num_clients, eps):
            return train(model, loader, **kwargs)

    client.train_model = train_model
    try:
        yield
    finally:
        client.train_model = train


# name -> (run-config overrides, patch(keys, num_clients) held for the run)
SCREENS: dict[str, tuple[dict, Callable]] = {
    "class-balanced-aggregation": ({}, _class_balanced_aggregation),
    "fedavgm": (SGD_MOMENTUM, _fedavgm),
    "fedadam-0.01": ({"optimizer": "sgd"}, functools.partial(_fedadam, eta=0.01)),
    "fedadam-0.03": ({"optimizer": "sgd"}, functools.partial(_fedadam, eta=0.03)),
    "adamw-eps-0.03": ({}, functools.partial(_adamw_eps, eps=0.03)),
    "adamw-eps-0.01": ({}, functools.partial(_adamw_eps, eps=0.01)),
    "skewed-eps-0.03": ({}, functools.partial(_skewed_eps, eps=0.03)),
}
