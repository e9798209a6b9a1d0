"""FedAvg (McMahan et al., 2017): Flower's own aggregation, through Pollen's sampling."""

from strategies.base import PollenFedAvg


class FedAvg(PollenFedAvg):
    """Sample-weighted mean of the clients' travelling tensors; nothing more."""
