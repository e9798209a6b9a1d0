"""One client's view of a run: its identity, its data splits, its model and device."""

from __future__ import annotations

import functools
from dataclasses import dataclass

import datasets
import torch
from flwr.app import Context, Message
from torch import nn

from pollen.adapters import load_travelling_state
from pollen.config import ConfigError, RunConfig
from pollen.data import client_split, load_task
from pollen.device import resolve_device
from pollen.models import build_model, check_compatible
from pollen.records import ARRAYS_KEY, from_array_record
from pollen.training import torch_dataset


@dataclass(frozen=True)
class ClientData:
    train: datasets.Dataset  # torch format
    test: datasets.Dataset
    num_classes: int


@dataclass(frozen=True)
class ClientJob:
    config: RunConfig
    client_id: str
    partition_id: int
    num_partitions: int
    device: torch.device

    @classmethod
    def from_message(cls, message: Message, context: Context) -> ClientJob:
        """The run config comes from the server's message; identity and device from the
        node config (``client-id``, ``partition-id``, ``num-partitions``, ``device``)."""
        sent = message.content["config"]
        config = RunConfig.from_mapping({k: v for k, v in sent.items()
                                         if k in RunConfig.keys()})
        node = context.node_config
        if "partition-id" not in node or "num-partitions" not in node:
            raise ConfigError("node config needs partition-id and num-partitions; got keys "
                              f"{sorted(node)}")
        partition_id, num_partitions = int(node["partition-id"]), int(node["num-partitions"])
        client_id = str(node.get("client-id", partition_id))
        device = resolve_device(str(node.get("device", config.device)))
        return cls(config, client_id, partition_id, num_partitions, device)

    @property
    def data(self) -> ClientData:
        return _client_data(self.config, self.partition_id, self.num_partitions)

    def model_from(self, message: Message, key: str = ARRAYS_KEY) -> nn.Module:
        """The cached model with the message's tensors (ArrayRecord ``key``) loaded."""
        model = _model(self.config, self.data.num_classes)
        arrays = from_array_record(message.content[key])
        load_travelling_state(model, arrays, what=f"'{key}' sent to client {self.client_id}")
        return model.to(self.device)


@functools.lru_cache(maxsize=32)  # a simulation worker serves many clients in turn
def _client_data(config: RunConfig, partition_id: int, num_partitions: int) -> ClientData:
    task = load_task(config)
    check_compatible(config.model, task.modality)
    train, test = client_split(task, config, partition_id, num_partitions)
    convert = functools.partial(torch_dataset, modality=task.modality,
                                model_name=config.model, max_seq_len=config.max_seq_len)
    return ClientData(convert(train), convert(test), task.num_classes)


@functools.lru_cache(maxsize=1)
def _model(config: RunConfig, num_classes: int) -> nn.Module:
    """Built once per process: every call overwrites all travelling (trainable) tensors,
    and the frozen ones never change."""
    return build_model(config, num_classes)
