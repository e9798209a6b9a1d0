"""FedProx (Li et al., 2020): Flower's FedProx, combined with Pollen's FedAvg hooks.

Method resolution order: FedProx -> PollenStrategy -> flwr FedAvg, so Flower's FedProx
injects ``proximal-mu`` into the train config and then hands over to Pollen's sampling.
The client adds (mu/2)||w - w_global||^2 over the travelling tensors
(``pollen.training.train``).

Message contract: the shared one (``strategies/base.py``), and the train config's
``proximal-mu`` (float): the client adds (mu/2)||w - w_received||^2 to its loss.
"""

from flwr.serverapp.strategy import FedProx as FlowerFedProx

from strategies.base import PollenStrategy
from strategies.fedprox.config import FedProxConfig


class FedProx(FlowerFedProx, PollenStrategy):
    """Flower's FedProx keywords; ``proximal_mu`` defaults to ``fedprox.mu``. A plain
    Flower ClientApp that does not read ``proximal-mu`` trains plain FedAvg (as with
    Flower's own FedProx)."""

    def __init__(self, *, proximal_mu: float = FedProxConfig().mu, **kwargs) -> None:
        PollenStrategy.__init__(self, **kwargs)
        self.proximal_mu = proximal_mu
