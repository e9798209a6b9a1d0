"""Server halves of Pollen's strategies, one per file, selected by the ``strategy`` key."""

from __future__ import annotations

from flwr.app import ArrayRecord
from torch import nn

from pollen.config import ConfigError, RunConfig
from strategies.base import PollenFedAvg
from strategies.directory import ClientDirectory
from strategies.fedavg import FedAvg
from strategies.fedmerge import FedMerge, initial_global_models
from strategies.fedprox import FedProx
from strategies.fedref import FedRef

STRATEGIES: dict[str, type[PollenFedAvg]] = {"fedavg": FedAvg, "fedprox": FedProx,
                                             "fedref": FedRef, "fedmerge": FedMerge}


def check_strategy_name(name: str) -> None:
    if name not in STRATEGIES:
        raise ConfigError(f"unknown strategy '{name}'; choose one of: {', '.join(STRATEGIES)}")


def build_strategy(config: RunConfig, directory: ClientDirectory,
                   initial_arrays: ArrayRecord, template: nn.Module | None) -> PollenFedAvg:
    """The configured strategy; ``template`` is the server's model (same architecture and
    frozen weights as the clients'), needed by strategies that initialise several models
    (fedmerge)."""
    check_strategy_name(config.strategy)
    common = dict(directory=directory, initial_arrays=initial_arrays, seed=config.seed,
                  fraction_train=config.fraction_train,
                  fraction_evaluate=config.fraction_evaluate,
                  min_train_nodes=1, min_evaluate_nodes=1,
                  min_available_nodes=config.min_clients,
                  client_rotation=config.client_rotation, min_replies=config.min_replies,
                  norm_limit=config.update_norm_limit,
                  norm_action=config.update_norm_action)
    if config.strategy == "fedprox":
        return FedProx(proximal_mu=config.fedprox_mu, **common)
    if config.strategy == "fedref":
        return FedRef(p=config.fedref_p, lam=config.fedref_lambda,
                      client_mu=config.fedref_mu if config.fedref_client_prox else 0.0,
                      **common)
    if config.strategy == "fedmerge":
        if template is None:
            raise ValueError("fedmerge needs the server's model to initialise its global models")
        return FedMerge(
            global_models=initial_global_models(template, config.num_global_models,
                                                config.seed),
            mu=config.fedmerge_mu, lr_w=config.lr_w, lr_theta=config.lr_theta,
            w_tensors=config.fedmerge_w_tensors, w_step=config.fedmerge_w_step, **common)
    return STRATEGIES[config.strategy](**common)
