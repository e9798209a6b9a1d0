"""FedAvg (McMahan et al., 2017): Flower's own aggregation, through Pollen's sampling.

Message contract: the shared one (``strategies/base.py``), nothing more.
"""

from strategies.base import PollenStrategy


class FedAvg(PollenStrategy):
    """Sample-weighted mean of the clients' travelling tensors; nothing more."""
