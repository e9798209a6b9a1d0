"""HeteroTune's keys, ``[tool.flwr.app.config.heterotune]``: DeMA's shape and CMGA."""

from dataclasses import dataclass

from pollen.catalog import recommended
from pollen.config import Section, at_least, non_empty_list, setting, split_list
from pollen.dema import DemaConfig


@dataclass(frozen=True)
class HeteroTuneConfig(Section):
    name = "heterotune"
    renamed = {"dema-rank": "dema-rank", "dema-experts": "dema-experts",
               "dema-banks": "dema-banks", "dema-target-modules": "dema-target-modules",
               "cmga": "cmga"}

    dema_rank: int = setting(8, at_least(1))
    dema_experts: int = setting(4, at_least(1))
    dema_banks: int = setting(2, at_least(1))
    # auto: the run model's LoRA targets (query,value for encoders, q/k/v/o for decoders)
    dema_target_modules: str = setting("auto", non_empty_list)
    cmga: bool = setting(True)

    def dema(self, seed: int, model: str, task: str) -> DemaConfig:
        targets = (recommended(model, "lora-target-modules", task)
                   if self.dema_target_modules == "auto" else self.dema_target_modules)
        return DemaConfig(rank=self.dema_rank, experts=self.dema_experts, banks=self.dema_banks,
                          target_modules=tuple(split_list(targets)), seed=seed)
