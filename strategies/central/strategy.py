"""The server-only baseline of guided merging's paper: only the server's labeled data D_s.

Each round the server trains the global model on all of D_s (search and held-out parts)
for ``local-epochs`` passes (or ``max-steps`` steps) with the clients' optimiser
settings (``optimizer``, ``lr`` and its per-round schedule, ``batch-size``); no client
trains.
Clients still evaluate the new global model on their local test splits, so the metrics
row is comparable with the federated strategies'.

Message contract: the shared one's query and evaluate (``strategies/base.py``); no train
message is sent.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from logging import INFO

from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.common.logger import log
from flwr.serverapp import Grid
from torch import nn
from torch.utils.data import Dataset

from pollen.adapters import load_travelling_state, travelling_state
from pollen.optimizer import LocalOptimizer
from pollen.records import from_array_record, to_array_record
from pollen.seeding import derive_seed
from pollen.training import make_loader, train
from strategies.base import PollenStrategy


class Central(PollenStrategy):
    def __init__(self, *, model: nn.Module, server_set: Dataset, epochs: int, max_steps: int,
                 round_lr: Callable[[int], float], batch_size: int,
                 optimizer: LocalOptimizer, **kwargs) -> None:
        super().__init__(**kwargs)
        self.optimizer = optimizer
        self.model, self.server_set = model, server_set
        self.epochs, self.max_steps = epochs, max_steps
        self.round_lr, self.batch_size = round_lr, batch_size

    def summary(self) -> None:
        log(INFO, "\t├──> Central (server-only): %d labeled server examples, %d epoch(s) a "
            "round, %s lr %g in round 1, batch %d; no client trains", len(self.server_set),
            self.epochs, self.optimizer.name, self.round_lr(1), self.batch_size)
        super().summary()

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        self.sent = {}
        return []

    def aggregate_train(self, server_round: int, replies: Iterable[Message]
                        ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        seed = derive_seed(self.seed, "central", server_round)
        device = next(self.model.parameters()).device
        load_travelling_state(self.model, from_array_record(self.global_arrays),
                              what="global model")
        result = train(self.model, make_loader(self.server_set, self.batch_size, shuffle=True,
                                               seed=seed),
                       epochs=self.epochs, lr=self.round_lr(server_round), device=device,
                       seed=seed, max_steps=self.max_steps, optimizer=self.optimizer)
        self.global_arrays = to_array_record(travelling_state(self.model))
        return self.global_arrays, MetricRecord({"train_loss": result.loss})
