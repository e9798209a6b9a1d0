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

from collections.abc import Iterable
from logging import INFO

from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.common.logger import log
from flwr.serverapp import Grid
from torch import nn

from pollen.records import from_array_record, to_array_record
from pollen.seeding import derive_seed
from pollen.training import ServerTraining
from strategies.base import PollenStrategy


class Central(PollenStrategy):
    """Flower's FedAvg keywords, and the server's recipe: ``model`` and ``server_data``
    (a Dataset or DataLoader of (inputs, label) pairs) with ``epochs`` (or ``max_steps``),
    ``lr``, ``batch_size`` and ``optimizer`` ("adamw" or "sgd"); or a ready
    ``training``. Any Flower ClientApp can evaluate its models."""

    def __init__(self, *, training: ServerTraining | None = None, model: nn.Module | None = None,
                 server_data=None, epochs: int = 1, max_steps: int = 0, lr: float = 0.01,
                 batch_size: int = 32, optimizer: str = "adamw", **kwargs) -> None:
        super().__init__(**kwargs)
        self.training = training or ServerTraining.of(
            model, server_data, epochs=epochs, max_steps=max_steps, lr=lr,
            batch_size=batch_size, optimizer=optimizer, who="Central")

    def summary(self) -> None:
        t = self.training
        log(INFO, "\t├──> Central (server-only): %d labeled server examples, %s a round, "
            "%s lr %g in round 1, batch %d; no client trains", len(t.dataset), t.per_round,
            t.optimizer.name, t.round_lr(1), t.batch_size)
        super().summary()

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        self.sent = {}
        return []

    def aggregate_train(self, server_round: int, replies: Iterable[Message]
                        ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        trained, loss = self.training.run(from_array_record(self.global_arrays), server_round,
                                          derive_seed(self.seed, "central", server_round))
        self.global_arrays = to_array_record(trained)
        return self.global_arrays, MetricRecord({"train_loss": loss})
