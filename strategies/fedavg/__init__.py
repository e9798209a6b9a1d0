"""FedAvg (McMahan et al., 2017)."""

from strategies.fedavg.strategy import FedAvg
from strategies.spec import MethodSpec

SPEC = MethodSpec("fedavg", build=lambda setup: FedAvg(**setup.common()))
