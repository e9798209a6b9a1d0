"""Heterogeneous clients: which backbone (family) each client runs.

``model-families`` lists the backbones (only strategies that federate several backbones
accept it; otherwise the one family is ``model``); a client's family is, in order of
precedence, its node config ``model`` (deployment), its entry in ``family-assignment``
(``client:family`` pairs), or round-robin by its numeric client id (client i runs family
i mod F). How a family's model is built is the strategy's (``strategies.model_builder``).
"""

from __future__ import annotations

from pollen.config import RunConfig
from pollen.errors import ConfigError


def family_of(config: RunConfig, client_id: str, node_model: str | None = None) -> str:
    families = config.families
    if node_model is not None:
        if node_model not in families:
            raise ConfigError(f"this client's node config says model '{node_model}', which "
                              f"is not among the run's models ({', '.join(families)})")
        return node_model
    if client_id in config.family_map:
        return config.family_map[client_id]
    if len(families) == 1:
        return families[0]
    if not client_id.isdigit():
        raise ConfigError(f"client '{client_id}' has no family: give it a node config "
                          "`model` or an entry in family-assignment (round-robin needs a "
                          "numeric client id)")
    return families[int(client_id) % len(families)]
