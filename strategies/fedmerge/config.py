"""FedMerge's keys, ``[tool.flwr.app.config.fedmerge]``."""

from dataclasses import dataclass

from pollen.config import Section, at_least, non_negative, one_of, setting


@dataclass(frozen=True)
class FedMergeConfig(Section):
    name = "fedmerge"
    renamed = {"num-global-models": "num-global-models", "fedmerge-mu": "mu",
               "lr-w": "lr-w", "lr-theta": "lr-theta", "fedmerge-w-tensors": "w-tensors",
               "fedmerge-w-step": "w-step"}

    num_global_models: int = setting(3, at_least(1))
    mu: float = setting(0.01, non_negative)
    lr_w: float = setting(1.0, non_negative)
    lr_theta: float = setting(1.0, non_negative)
    w_tensors: str = setting("auto", one_of("auto", "head", "all"))
    w_step: str = setting("official", one_of("official", "plain"))
