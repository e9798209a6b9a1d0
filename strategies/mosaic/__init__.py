"""Mosaic (arXiv 2505.19699): data-free distillation of class-specific experts into the
global model, through generators the clients train."""

from strategies.fedavg_per_family import family_common
from strategies.mosaic.client import MosaicClient
from strategies.mosaic.config import MosaicConfig
from strategies.mosaic.strategy import Mosaic
from strategies.spec import MethodSpec, ServerSetup


def build(setup: ServerSetup) -> Mosaic:
    return Mosaic(settings=setup.config.method, families=setup.config.families,
                  models=setup.models, num_classes=setup.num_classes,
                  test_loaders=setup.test_loaders, **family_common(setup))


SPEC = MethodSpec("mosaic", config=MosaicConfig, build=build, client=MosaicClient(),
                  families=True,
                  not_instruct=("Mosaic's generator synthesises continuous inputs in a "
                                "classifier's input space, to distil class experts; a causal LM "
                                "reads discrete tokens and generates text, and the paper (image "
                                "classification only) defines no such variant"))
