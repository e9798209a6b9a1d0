"""FedRef (Yoon, Choi, De Neve, arXiv 2506.23210)."""

from strategies.fedref.client import FedRefClient
from strategies.fedref.config import FedRefConfig
from strategies.fedref.strategy import FedRef
from strategies.spec import MethodSpec, ServerSetup


def build(setup: ServerSetup) -> FedRef:
    settings: FedRefConfig = setup.config.method
    return FedRef(p=settings.p, lam=settings.lambda_,
                  client_mu=settings.mu if settings.client_prox else 0.0,
                  recency_weighted=settings.reference_weights == "recency", **setup.common())


SPEC = MethodSpec("fedref", config=FedRefConfig, build=build, client=FedRefClient())
