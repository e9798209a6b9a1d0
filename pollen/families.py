"""Heterogeneous clients: which backbone (family) each client runs, and its model.

``model-families`` lists the backbones; a client's family is, in order of precedence,
its node config ``model`` (deployment), its entry in ``family-assignment``
(``client:family`` pairs), or round-robin by its numeric client id (client i runs
family i mod F). Strategies that federate across families (``FAMILY_STRATEGIES``) build
each family's model here: DeMA for heterotune, LoRA for the baselines (with the family's
own rank under hetlora). Every other strategy runs the single ``model``.
"""

from __future__ import annotations

from torch import nn

from pollen.config import FAMILY_STRATEGIES, ConfigError, RunConfig


def family_of(config: RunConfig, client_id: str, node_model: str | None = None) -> str:
    families = config.families
    if config.strategy not in FAMILY_STRATEGIES:
        if node_model is not None and node_model != config.model:
            raise ConfigError(f"this client's node config says model '{node_model}' but the "
                              f"run trains '{config.model}'")
        return config.model
    if node_model is not None:
        if node_model not in families:
            raise ConfigError(f"this client's node config says model '{node_model}', which "
                              f"is not among model-families ({', '.join(families)})")
        return node_model
    if client_id in config.family_map:
        return config.family_map[client_id]
    if not client_id.isdigit():
        raise ConfigError(f"client '{client_id}' has no family: give it a node config "
                          "`model` or an entry in family-assignment (round-robin needs a "
                          "numeric client id)")
    return families[int(client_id) % len(families)]


def family_config(config: RunConfig, family: str) -> RunConfig:
    """The config a family's model is built from."""
    if config.strategy == "hetlora":
        return config.replace(model=family, lora_r=config.hetlora_rank_of[family])
    return config.replace(model=family)


def build_family_model(config: RunConfig, family: str, num_classes: int) -> nn.Module:
    from pollen.dema import DemaConfig, inject_dema
    from pollen.models import build_backbone, build_model

    if config.strategy != "heterotune":
        return build_model(family_config(config, family), num_classes)
    dema = DemaConfig(rank=config.dema_rank, experts=config.dema_experts,
                      banks=config.dema_banks,
                      target_modules=tuple(m.strip() for m in config.dema_target_modules
                                           .split(",") if m.strip()),
                      seed=config.seed)
    if family == "cnn":
        raise ConfigError("heterotune adapts transformer encoders; 'cnn' has no encoder layers")
    return inject_dema(build_backbone(family, num_classes, config.seed), dema, family)
