"""HetLoRA-style baseline (Cho et al., 2024): a LoRA rank per family."""

from torch import nn

from pollen.config import RunConfig
from pollen.models import build_model
from strategies.fedavg_per_family import family_common
from strategies.hetlora.config import HetLoRAConfig
from strategies.hetlora.strategy import HetLoRA
from strategies.spec import MethodSpec


def build_ranked_model(config: RunConfig, family: str, num_classes: int) -> nn.Module:
    """The family's LoRA model at the family's own rank."""
    rank = config.method.rank_of(config)[family]
    return build_model(config.for_family(family).replace(lora_r=rank), num_classes)


SPEC = MethodSpec("hetlora", config=HetLoRAConfig, families=True,
                  build_model=build_ranked_model,
                  build=lambda setup: HetLoRA(ranks=setup.config.method.rank_of(setup.config),
                                              **family_common(setup)))
