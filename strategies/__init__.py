"""Server halves of Pollen's strategies, one per file, selected by the ``strategy`` key."""

from __future__ import annotations

import datasets
from flwr.app import ArrayRecord
from torch import nn

from pollen.config import ConfigError, RunConfig
from pollen.families import FAMILY_STRATEGIES
from pollen.server_data import ServerData
from pollen.training import torch_dataset
from strategies.atlas import ModelAtlas
from strategies.base import PollenFedAvg
from strategies.central import Central
from strategies.coefficient_search import CoefficientSearch
from strategies.directory import ClientDirectory
from strategies.fedavg import FedAvg
from strategies.fedmerge import FedMerge, initial_global_models
from strategies.fedprox import FedProx
from strategies.fedref import FedRef
from strategies.families import FamilyFedAvg
from strategies.guided import GuidedMerge
from strategies.heterotune import HeteroTune
from strategies.hetlora import HetLoRA
from strategies.mosaic import Mosaic

STRATEGIES: dict[str, type[PollenFedAvg]] = {"fedavg": FedAvg, "fedprox": FedProx,
                                             "fedref": FedRef, "fedmerge": FedMerge,
                                             "guided": GuidedMerge, "central": Central,
                                             "heterotune": HeteroTune,
                                             "fedavg-per-family": FamilyFedAvg,
                                             "hetlora": HetLoRA, "mosaic": Mosaic}


def check_strategy_name(name: str) -> None:
    if name not in STRATEGIES:
        raise ConfigError(f"unknown strategy '{name}'; choose one of: {', '.join(STRATEGIES)}")


def build_strategy(config: RunConfig, directory: ClientDirectory,
                   initial_arrays: ArrayRecord, template: nn.Module | None,
                   server_data: ServerData | None = None, modality: str = "",
                   initial_models: dict | None = None,
                   family_models: dict[str, nn.Module] | None = None, num_classes: int = 0,
                   test_loaders: dict | None = None) -> PollenFedAvg:
    """The configured strategy; ``template`` is the server's model (same architecture and
    frozen weights as the clients'), needed by strategies that initialise several models
    (fedmerge) or run it on the server's data ``server_data`` (guided, central), whose
    examples are of ``modality``; ``initial_models`` are the travelling tensors of each
    family's model (heterotune, fedavg-per-family, hetlora, mosaic). Mosaic also needs
    each family's model object ``family_models`` (the server's experts and student run on
    them), ``num_classes``, and optionally the server's test split per family
    ``test_loaders``, to report accuracies around distillation."""
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
    if config.strategy in FAMILY_STRATEGIES:
        if initial_models is None:
            raise ValueError(f"{config.strategy} needs every family's initial model")
        common.pop("initial_arrays")
        if config.strategy == "heterotune":
            return HeteroTune(initial_models=initial_models, use_cmga=config.cmga, **common)
        if config.strategy == "mosaic":
            if family_models is None or num_classes < 1:
                raise ValueError("mosaic needs every family's model and the class count")
            return Mosaic(initial_models=initial_models, config=config, models=family_models,
                          num_classes=num_classes, test_loaders=test_loaders, **common)
        if config.strategy == "hetlora":
            return HetLoRA(initial_models=initial_models, ranks=config.hetlora_rank_of,
                           **common)
        return FamilyFedAvg(initial_models=initial_models, **common)
    if config.strategy in ("guided", "central"):
        if template is None or server_data is None:
            raise ValueError(f"{config.strategy} needs the server's model and its data")
        device = next(template.parameters()).device

        def convert(split: datasets.Dataset) -> datasets.Dataset:
            return torch_dataset(split, modality, config.model, config.max_seq_len)

        if config.strategy == "central":
            everything = datasets.concatenate_datasets([server_data.search, server_data.holdout])
            return Central(model=template, server_set=convert(everything),
                           epochs=config.local_epochs, lr=config.lr,
                           batch_size=config.batch_size, **common)
        search = CoefficientSearch(
            template, convert(server_data.search), convert(server_data.holdout),
            loss="ce" if server_data.labeled else config.unlabeled_loss,
            granularity=config.guided_granularity,
            steps=config.search_steps, lr=config.search_lr,
            batch_size=config.search_batch_size, device=device)
        atlas = ModelAtlas(config.atlas_size, config.max_staleness, config.eviction_patience)
        return GuidedMerge(search=search, atlas=atlas, **common)
    return STRATEGIES[config.strategy](**common)
