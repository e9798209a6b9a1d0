"""The server app's side of the registry: publish each round's adapters.

What a strategy saves at the end (``final_models``) is what it publishes every round:
``model`` as the global adapter, ``adapters/clients/<id>`` as client ``<id>``'s
personalised adapter (FedMerge), and each family's adapter (heterotune and its
baselines: the folders ``model_family`` names). Other folders (FedMerge's individual
global models) stay in the run folder.

The publish token comes from the environment (``POLLEN_REGISTRY_TOKEN``, or the file named
by ``POLLEN_REGISTRY_TOKEN_FILE`` as in the compose file), never from the run config,
which is written to config.json and sent to every client.
"""

from __future__ import annotations

import os
from logging import WARNING

import grpc
import numpy as np
from flwr.common.logger import log
from torch import nn

from pollen.config import RunConfig
from pollen.errors import ConfigError
from pollen.registry.bundle import base_model_digest, encode_bundle, manifest_for
from pollen.registry.client import connect, publish

TOKEN_VARIABLE = "POLLEN_REGISTRY_TOKEN"
TOKEN_FILE_VARIABLE = "POLLEN_REGISTRY_TOKEN_FILE"
LOOPBACK_HOSTS = ("localhost", "127.0.0.1", "[::1]")


def published_scopes(strategy) -> list[tuple[str, str, str | None, dict[str, np.ndarray]]]:
    """(scope, name, family, tensors) for the folders of ``final_models`` that are
    published; family None is the run's model."""
    scopes = []
    for folder, tensors in sorted(strategy.final_models().items()):
        family = strategy.model_family(folder)
        if family is not None:
            scopes.append(("family", family, family, tensors))
        elif folder == "model":
            scopes.append(("global", "", None, tensors))
        elif folder.startswith("adapters/clients/"):
            scopes.append(("client", folder.rsplit("/", 1)[1], None, tensors))
    return scopes


class RegistryPublisher:
    def __init__(self, config: RunConfig, models: dict[str, nn.Module], num_classes: int,
                 run_id: str) -> None:
        """``models``: the server's model of each family (the run's model first)."""
        self.token = os.environ.get(TOKEN_VARIABLE, "")
        if not self.token and os.environ.get(TOKEN_FILE_VARIABLE):
            self.token = _read(os.environ[TOKEN_FILE_VARIABLE], TOKEN_FILE_VARIABLE).decode().strip()
        if not self.token:
            raise ConfigError(f"registry-address is set but {TOKEN_VARIABLE} is not (nor "
                              f"{TOKEN_FILE_VARIABLE}): the server app needs the registry's "
                              "publish token")
        certificates = None
        if config.registry_root_certificates:
            certificates = _read(config.registry_root_certificates,
                                 "registry-root-certificates")
        elif config.registry_address.rsplit(":", 1)[0] not in LOOPBACK_HOSTS:
            raise ConfigError(f"registry {config.registry_address} is not on this machine: set "
                              "registry-root-certificates to the deployment's CA certificate")
        self.channel = connect(config.registry_address, certificates)
        self.config, self.models, self.num_classes, self.run_id = (config, models,
                                                                   num_classes, run_id)
        self.base_digests = {family: base_model_digest(m) for family, m in models.items()}

    def publish_round(self, strategy, server_round: int) -> list[str]:
        """Publish; the keys published, or an error per adapter that failed (logged; the
        run goes on, and its checkpoints hold the same tensors)."""
        results = []
        for scope, name, family, tensors in published_scopes(strategy):
            family = family or next(iter(self.models))
            manifest = manifest_for(self.models[family], self.config.replace(model=family),
                                    self.num_classes,
                                    base_digest=self.base_digests[family], scope=scope,
                                    name=name, server_round=server_round, run_id=self.run_id)
            bundle = encode_bundle(manifest, tensors, self.config.wire_dtype)
            label = f"{scope}{'/' + name if name else ''}@{server_round}"
            try:
                publish(self.channel, bundle, self.token)
                results.append(label)
            except grpc.RpcError as error:
                log(WARNING, "registry: publishing %s failed: %s", label, error.details())
                results.append(f"{label} failed: {error.code().name}: {error.details()}")
        return results

    def close(self) -> None:
        self.channel.close()


def _read(path: str, what: str) -> bytes:
    try:
        with open(os.path.expanduser(path), "rb") as handle:
            return handle.read()
    except OSError as error:
        raise ConfigError(f"{what}: {error}") from error
