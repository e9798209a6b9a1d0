"""FedRef's keys, ``[tool.flwr.app.config.fedref]``."""

from dataclasses import dataclass

from pollen.config import Section, at_least, non_negative, one_of, setting


@dataclass(frozen=True)
class FedRefConfig(Section):
    name = "fedref"
    renamed = {"fedref-p": "p", "fedref-lambda": "lambda", "fedref-mu": "mu",
               "fedref-client-prox": "client-prox"}

    p: int = setting(3, at_least(1))  # warm-up rounds, and aggregates in the reference
    lambda_: float = setting(0.1, non_negative)  # the server step's pull to the reference
    mu: float = setting(0.01, non_negative)  # the clients' proximal weight
    client_prox: bool = setting(True)  # clients pull towards the reference
    # recency: the official (p - i + 1) / Phi weights; uniform: methods.md's plain mean
    reference_weights: str = setting("recency", one_of("recency", "uniform"))
