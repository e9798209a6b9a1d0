"""One client's view of a run: its identity, its data splits, its model and device."""

from __future__ import annotations

import functools
from dataclasses import dataclass

import datasets
import torch
from flwr.app import Context, Message
from torch import nn

from pollen.adapters import load_travelling_state
from pollen.catalog import check_compatible
from pollen.config import RunConfig
from pollen.data import client_file_split, client_split, load_task
from pollen.device import limit_cpu_threads, node_device
from pollen.errors import ConfigError
from pollen.families import family_of
from pollen.nodecache import cached_splits, split_key
from pollen.records import ARRAYS_KEY, LABEL_NAMES_KEY, from_array_record
from pollen.training import torch_dataset
from strategies import method_of, run_config, run_config_keys


@dataclass(frozen=True)
class ClientData:
    train: datasets.Dataset  # torch format
    test: datasets.Dataset
    num_classes: int
    modality: str
    response_labels: tuple[str, ...] = ()  # instruct: the labels are the responses


@dataclass(frozen=True)
class ClientJob:
    """Where a client's data comes from: in simulation, partition ``partition-id`` of
    ``num-partitions`` of the run's dataset; in deployment, its own file ``data-path``."""

    config: RunConfig
    client_id: str
    device: torch.device
    label_names: tuple[str, ...]
    partition: tuple[int, int] | None  # (partition-id, num-partitions)
    data_path: str | None
    family: str  # the backbone this client runs (``pollen.families``)

    @classmethod
    def from_message(cls, message: Message, context: Context) -> ClientJob:
        """The run config comes from the server's message; identity, data and device from
        the node config (``client-id``, ``data-path`` or ``partition-id`` and
        ``num-partitions``, ``model``, ``device``, ``threads``)."""
        sent = message.content["config"]
        keys = run_config_keys()
        config = run_config({k: v for k, v in sent.items() if k in keys})
        label_names = tuple(sent.get(LABEL_NAMES_KEY, ()))
        node = context.node_config
        limit_cpu_threads(node.get("threads"))
        node_model = str(node["model"]) if "model" in node else None
        device = node_device(config, str(node["device"]) if "device" in node else None)
        if "data-path" in node:
            if "client-id" not in node:
                raise ConfigError("a client with data-path needs a client-id in its node "
                                  "config (its stable name across restarts)")
            client_id = str(node["client-id"])
            return cls(config, client_id, device, label_names, None, str(node["data-path"]),
                       family_of(config, client_id, node_model))
        if "partition-id" not in node or "num-partitions" not in node:
            raise ConfigError("node config needs data-path and client-id (deployment) or "
                              f"partition-id and num-partitions (simulation); got keys "
                              f"{sorted(node)}")
        partition = (int(node["partition-id"]), int(node["num-partitions"]))
        client_id = str(node.get("client-id", partition[0]))
        return cls(config, client_id, device, label_names, partition, None,
                   family_of(config, client_id, node_model))

    @property
    def data(self) -> ClientData:
        return client_data(self.config, self.partition, self.data_path, self.label_names,
                            self.family)

    def model_from(self, message: Message, key: str = ARRAYS_KEY) -> nn.Module:
        """The cached model with the message's tensors (ArrayRecord ``key``) loaded."""
        model = _model(self.config, self.family, self.data.num_classes)
        arrays = from_array_record(message.content[key])
        load_travelling_state(model, arrays, what=f"'{key}' sent to client {self.client_id}")
        return model.to(self.device)


@functools.lru_cache(maxsize=32)  # a simulation worker serves many clients in turn
def client_data(config: RunConfig, partition: tuple[int, int] | None, data_path: str | None,
                 label_names: tuple[str, ...], family: str) -> ClientData:
    """From this machine's disk cache after the first message (``pollen.nodecache``): a
    deployed client runs each message in a fresh process."""
    if data_path is not None and not label_names and config.task != "instruct":
        raise ConfigError("the server sent no label names for this client's data-path")
    key = split_key(config, partition, label_names, family, data_path=data_path)
    splits, facts = cached_splits(key, lambda: _split(config, partition, data_path,
                                                      label_names, family))
    return ClientData(splits["train"], splits["test"], facts["num_classes"], facts["modality"],
                      tuple(facts["response_labels"]))


def _split(config: RunConfig, partition: tuple[int, int] | None, data_path: str | None,
           label_names: tuple[str, ...], family: str) -> tuple[dict, dict]:
    if data_path is not None:
        modality = "instruct" if config.task == "instruct" else "text"
        num_classes = len(label_names)
        check_compatible(family, modality, config.task)
        train, test, response_labels = client_file_split(data_path, config, label_names)
    else:
        task = load_task(config)
        modality, num_classes = task.modality, task.num_classes
        response_labels = task.response_labels
        check_compatible(family, modality, config.task)
        train, test = client_split(task, config, *partition)
    convert = functools.partial(torch_dataset, modality=modality, model_name=family,
                                max_seq_len=config.max_seq_len)
    return ({"train": convert(train), "test": convert(test)},
            {"num_classes": num_classes, "modality": modality,
             "response_labels": list(response_labels)})


@functools.lru_cache(maxsize=3)  # a simulation worker may serve clients of 3 families
def _model(config: RunConfig, family: str, num_classes: int) -> nn.Module:
    """Built once per process and family: every call overwrites all travelling
    (trainable) tensors, and the frozen ones never change."""
    return method_of(config.strategy).build_model(config, family, num_classes)
