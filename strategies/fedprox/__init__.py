"""FedProx (Li et al., 2020)."""

from strategies.fedprox.config import FedProxConfig
from strategies.fedprox.strategy import FedProx
from strategies.spec import MethodSpec

SPEC = MethodSpec("fedprox", config=FedProxConfig,
                  build=lambda setup: FedProx(proximal_mu=setup.config.method.mu,
                                              **setup.common()))
