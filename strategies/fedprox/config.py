"""FedProx's keys, ``[tool.flwr.app.config.fedprox]``."""

from dataclasses import dataclass

from pollen.config import Section, non_negative, setting


@dataclass(frozen=True)
class FedProxConfig(Section):
    name = "fedprox"
    renamed = {"fedprox-mu": "mu"}

    mu: float = setting(0.01, non_negative)  # the proximal term's weight
