"""What a method is to Pollen: its keys, its server half, its client half, and what it
asks of the run.

A method lives in ``strategies/<method>/``: ``config.py`` (its ``Section`` of keys, if it
has any), ``strategy.py`` (the server half, a Flower strategy) and ``client.py`` (what it
adds to the client app's train step, if anything). Its package exports ``SPEC``, and
``strategies/__init__.py`` lists the specs: adding a method is one folder and one line.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import datasets
import numpy as np
import torch
from flwr.app import ArrayRecord, Message
from torch import nn

from pollen.config import RunConfig, Section
from pollen.errors import ConfigError
from pollen.models import build_model
from pollen.records import to_array_record
from pollen.server_data import ServerData
from pollen.training import EvalResult, ServerTraining, torch_dataset
from strategies.base import PollenStrategy
from strategies.directory import ClientDirectory

ClientJob = Any  # client_app.job.ClientJob, which imports this module


@dataclass
class ServerSetup:
    """What the server app hands a method's ``build``: the run config, the client
    directory, each family's server model (same architecture and frozen weights as the
    clients') and its initial travelling tensors, the server's own data (for methods
    that train on it, as examples of ``modality``), the class count, and the server's
    test split per family (for methods that report accuracies inside a round)."""

    config: RunConfig
    directory: ClientDirectory
    models: dict[str, nn.Module]
    initial_models: dict[str, dict[str, np.ndarray]]
    num_classes: int
    modality: str
    server_data: ServerData | None = None
    test_loaders: dict[str, Any] | None = None

    @property
    def model(self) -> nn.Module:
        """The run's model (the first family's)."""
        return next(iter(self.models.values()))

    @property
    def initial_arrays(self) -> ArrayRecord:
        return to_array_record(next(iter(self.initial_models.values())))

    def server_training(self, split: datasets.Dataset) -> ServerTraining:
        """The clients' training recipe on a split of the server's labelled data."""
        c = self.config
        return ServerTraining(self.model, torch_dataset(split, self.modality, c.model,
                                                        c.max_seq_len),
                              epochs=c.local_epochs, max_steps=c.max_steps,
                              round_lr=c.round_lr, batch_size=c.batch_size,
                              optimizer=c.local_optimizer)

    def common(self) -> dict[str, Any]:
        """Keyword arguments of ``PollenStrategy`` that every method passes on."""
        c = self.config
        return dict(directory=self.directory, initial_arrays=self.initial_arrays,
                    seed=c.seed, fraction_train=c.fraction_train,
                    fraction_evaluate=c.fraction_evaluate, min_train_nodes=1,
                    min_evaluate_nodes=1, min_available_nodes=c.min_clients,
                    client_rotation=c.client_rotation, min_replies=c.min_replies,
                    update_norm_limit=c.update_norm_limit,
                    update_norm_action=c.update_norm_action)


class ClientHalf:
    """What a method adds to the client app's train step; the defaults add nothing.

    ``proximal_anchor``: the tensors the proximal term pulls towards, when the strategy
    sent ``proximal-mu`` (None: the received model, as in FedProx).
    ``before_training``: extra reply records computed from the received model.
    ``after_training``: extra reply records and metrics computed from the trained model.
    ``after_evaluation``: extra evaluate-reply metrics; ``evaluate`` scores a model's loss
    on the client's local test split, as the reply's own ``eval_loss`` was scored (no
    generated answers).
    """

    def proximal_anchor(self, job: ClientJob, message: Message) -> list[torch.Tensor] | None:
        return None

    def before_training(self, job: ClientJob, message: Message, model: nn.Module,
                        seed: int) -> dict[str, ArrayRecord]:
        return {}

    def after_training(self, job: ClientJob, message: Message, model: nn.Module,
                       seed: int) -> tuple[dict[str, ArrayRecord], dict[str, float]]:
        return {}, {}

    def after_evaluation(self, job: ClientJob, message: Message,
                         evaluate: Callable[[nn.Module], EvalResult]) -> dict[str, float]:
        return {}


ModelBuilder = Callable[[RunConfig, str, int], nn.Module]  # (config, family, classes)


def default_model(config: RunConfig, family: str, num_classes: int) -> nn.Module:
    """The family's backbone as ``pollen.models.build_model`` wraps it (LoRA or whole)."""
    return build_model(config.for_family(family), num_classes)


@dataclass(frozen=True)
class MethodSpec:
    """One method. ``families``: it federates clients of several backbones
    (``model-families``); ``server_data``: it trains on server-held data, ``labels``
    too if it needs them; ``build_model`` builds a family's model (LoRA by default)."""

    name: str
    build: Callable[[ServerSetup], PollenStrategy]
    config: type[Section] | None = None
    client: ClientHalf = field(default_factory=ClientHalf)
    families: bool = False
    server_data: bool = False
    server_labels: bool = False
    build_model: ModelBuilder = default_model
    # Why the method does not run task 'instruct' (empty: it does).
    not_instruct: str = ""

    def check(self, config: RunConfig) -> None:
        """Raise ConfigError if the run's shared keys do not suit this method."""
        if config.task == "instruct" and self.not_instruct:
            raise ConfigError(f"strategy '{self.name}' does not run task 'instruct': "
                              f"{self.not_instruct}")
        if not self.families and (config.model_families or config.family_assignment):
            raise ConfigError(f"model-families and family-assignment are for the strategies "
                              f"that federate several backbones; strategy '{self.name}' runs "
                              f"the one model '{config.model}'")
        if self.server_data and not config.has_server_data:
            raise ConfigError(f"strategy '{self.name}' needs server-held data: set "
                              "server-data-fraction in (0, 1) or server-data to a file")
        if self.server_labels and not config.server_data_labeled:
            raise ConfigError(f"strategy '{self.name}' trains on the server's labels: it "
                              "needs server-data-labeled = true")
        if config.method is not None:
            config.method.check_run(config)
