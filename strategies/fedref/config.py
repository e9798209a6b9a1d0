"""FedRef's keys, ``[tool.flwr.app.config.fedref]``."""

from dataclasses import dataclass

from pollen.config import Section, at_least, non_negative, setting


@dataclass(frozen=True)
class FedRefConfig(Section):
    name = "fedref"
    renamed = {"fedref-p": "p", "fedref-lambda": "lambda", "fedref-mu": "mu",
               "fedref-client-prox": "client-prox"}

    p: int = setting(3, at_least(1))  # global models in the reference's window
    lambda_: float = setting(0.1, non_negative)  # the server step's pull to the reference
    mu: float = setting(0.01, non_negative)  # the clients' proximal weight
    client_prox: bool = setting(True)  # clients pull towards the reference
