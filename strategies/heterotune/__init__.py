"""HeteroTune (arXiv 2411.16796): DeMA adapters across backbone families, with CMGA."""

from torch import nn

from pollen.config import RunConfig
from pollen.dema import inject_dema
from pollen.errors import ConfigError
from pollen.models import WeightFormat, build_backbone, prepare_for_training
from strategies.fedavg_per_family import family_common
from strategies.heterotune.client import HeteroTuneClient
from strategies.heterotune.config import HeteroTuneConfig
from strategies.heterotune.strategy import HeteroTune
from strategies.spec import MethodSpec


def build_dema_model(config: RunConfig, family: str, num_classes: int) -> nn.Module:
    """The family's backbone with DeMA injected (``pollen.dema``)."""
    if family == "cnn":
        raise ConfigError("heterotune adapts transformer encoders; 'cnn' has no encoder layers")
    backbone = prepare_for_training(
        build_backbone(family, num_classes, config.seed, config.task, WeightFormat.of(config)),
        config)
    try:
        return inject_dema(backbone, config.method.dema(config.seed, family, config.task,
                                                        config.families), family)
    except ConfigError as error:  # the only input check inside: the target modules
        raise ConfigError(f"heterotune.dema-target-modules: {error}") from error


SPEC = MethodSpec("heterotune", config=HeteroTuneConfig, families=True, client=HeteroTuneClient(),
                  build_model=build_dema_model,
                  build=lambda setup: HeteroTune(
                      use_cmga=setup.config.method.cmga,
                      per_tensor=setup.config.method.cmga_granularity == "tensor",
                      family_gate=setup.config.method.family_gate,
                      share_projections=setup.config.method.alignment(
                          setup.config.families) == "absolute",
                      **family_common(setup)))
