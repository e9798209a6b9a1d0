"""HeteroTune's keys, ``[tool.flwr.app.config.heterotune]``: DeMA's shape and CMGA."""

from dataclasses import dataclass

from pollen.catalog import recommended
from pollen.config import Section, at_least, non_empty_list, one_of, setting, split_list
from pollen.dema import DemaConfig


@dataclass(frozen=True)
class HeteroTuneConfig(Section):
    name = "heterotune"
    renamed = {"dema-rank": "dema-rank", "dema-experts": "dema-experts",
               "dema-banks": "dema-banks", "dema-target-modules": "dema-target-modules",
               "cmga": "cmga"}

    dema_rank: int = setting(8, at_least(1))
    dema_experts: int = setting(4, at_least(1))
    dema_alpha: int = setting(16, at_least(1))  # output scale alpha / r, as LoRA's
    # absolute: bank l for layer l, and D/U shared by families of equal width;
    # relative: methods.md's dema-banks banks by relative depth, D/U per family
    layer_alignment: str = setting("absolute", one_of("absolute", "relative"))
    dema_banks: int = setting(2, at_least(1))  # relative alignment only
    # auto: the run model's LoRA targets (query,value for encoders, q/k/v/o for decoders)
    dema_target_modules: str = setting("auto", non_empty_list)
    cmga: bool = setting(True)
    # tensor: CMGA's inner products and projections per shared tensor; vector: over all
    cmga_granularity: str = setting("tensor", one_of("tensor", "vector"))

    def dema(self, seed: int, model: str, task: str) -> DemaConfig:
        targets = (recommended(model, "lora-target-modules", task)
                   if self.dema_target_modules == "auto" else self.dema_target_modules)
        return DemaConfig(rank=self.dema_rank, experts=self.dema_experts,
                          banks=0 if self.layer_alignment == "absolute" else self.dema_banks,
                          target_modules=tuple(split_list(targets)), seed=seed,
                          alpha=self.dema_alpha)
