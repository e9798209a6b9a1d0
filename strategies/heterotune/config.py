"""HeteroTune's keys, ``[tool.flwr.app.config.heterotune]``: DeMA's shape and CMGA."""

from dataclasses import dataclass

from pollen.catalog import is_decoder, recommended
from pollen.config import (RunConfig, Section, at_least, non_empty_list, one_of, setting,
                           split_list)
from pollen.dema import DemaConfig
from pollen.errors import ConfigError


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
    # relative: methods.md's dema-banks banks by relative depth, D/U per family;
    # auto: relative across encoders and decoders, absolute otherwise (``alignment``)
    layer_alignment: str = setting("auto", one_of("auto", "absolute", "relative"))
    dema_banks: int = setting(2, at_least(1))  # relative alignment only
    # auto: the run model's LoRA targets (query,value for encoders, q/k/v/o for decoders)
    dema_target_modules: str = setting("auto", non_empty_list)
    cmga: bool = setting(True)
    # tensor: CMGA's inner products and projections per shared tensor; vector: over all
    cmga_granularity: str = setting("tensor", one_of("tensor", "vector"))
    # do no harm: a family keeps its own step when the shared one raises its clients'
    # validation loss (``strategy.py``'s docstring: what it costs)
    family_gate: bool = setting(True)

    def alignment(self, families: list[str]) -> str:
        """The layer alignment the run uses. 'auto': 'absolute' pairs layer l of every
        family, which is the same pretrained layer only for depth prefixes of one
        checkpoint (MiniLM-L2/L4/L6); an encoder's layer l and a decoder's have nothing in
        common, so families that mix the two align by relative depth."""
        if self.layer_alignment != "auto":
            return self.layer_alignment
        return "relative" if len({is_decoder(f) for f in families}) > 1 else "absolute"

    def check_run(self, run: RunConfig) -> None:
        families = run.families
        if self.layer_alignment == "absolute" and len({is_decoder(f) for f in families}) > 1:
            raise ConfigError(f"heterotune.layer-alignment = 'absolute' pairs layer l of "
                              f"every family, but model-families ({', '.join(families)}) mixes "
                              "encoders and decoders, whose layers have nothing in common: use "
                              "'relative' or 'auto'")

    def dema(self, seed: int, model: str, task: str, families: list[str]) -> DemaConfig:
        targets = (recommended(model, "lora-target-modules", task)
                   if self.dema_target_modules == "auto" else self.dema_target_modules)
        absolute = self.alignment(families) == "absolute"
        return DemaConfig(rank=self.dema_rank, experts=self.dema_experts,
                          banks=0 if absolute else self.dema_banks,
                          target_modules=tuple(split_list(targets)), seed=seed,
                          alpha=self.dema_alpha)
