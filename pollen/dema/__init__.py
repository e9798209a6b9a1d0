"""DeMA, HeteroTune's dense mixture of adapters (methods.md §3), laid out like a peft
tuner: ``config`` (its settings), ``layer`` (the adapted linear layer and the shared
expert bank) and ``model`` (injection into a transformers encoder)."""

from pollen.dema.config import DemaConfig
from pollen.dema.model import DemaModel, inject_dema

__all__ = ["DemaConfig", "DemaModel", "inject_dema"]
