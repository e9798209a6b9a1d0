"""Guided merging's keys, ``[tool.flwr.app.config.guided]``; the server-held data it
searches on is shared (``server-data*``, which ``central`` uses too)."""

from dataclasses import dataclass

from pollen.config import AUTO, Section, at_least, non_negative, one_of, positive, setting


@dataclass(frozen=True)
class GuidedConfig(Section):
    name = "guided"
    renamed = {"unlabeled-loss": "unlabeled-loss", "atlas-size": "atlas-size",
               "max-staleness": "max-staleness", "guided-granularity": "granularity",
               "search-steps": "search-steps", "search-lr": "search-lr",
               "search-batch-size": "search-batch-size",
               "eviction-patience": "eviction-patience"}

    unlabeled_loss: str = setting("im", one_of("im", "entropy"))
    atlas_size: int = setting(10, at_least(1))
    max_staleness: int = setting(2, at_least(0))
    granularity: str = setting("vector", one_of("vector", "tensor"))
    # "auto": the model kind's budget (strategies.guided.strategy.SEARCH_BUDGET)
    search_steps: int = setting(AUTO, at_least(1), auto=True)
    search_lr: float = setting(0.1, positive)
    search_batch_size: int = setting(AUTO, at_least(1), auto=True)
    eviction_patience: int = setting(3, at_least(1))
    # |c_m - c0_m| <= rho c0_m around FedAvg's coefficients c0 (0: the paper's free search)
    trust_region: float = setting(0.25, non_negative)
    # with labelled D_s: the server's own training of the global is a third candidate
    server_member: bool = setting(False)
