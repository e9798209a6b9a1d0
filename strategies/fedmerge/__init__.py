"""FedMerge (arXiv 2504.06768)."""

from strategies.fedmerge.config import FedMergeConfig
from strategies.fedmerge.strategy import FedMerge, initial_global_models
from strategies.spec import MethodSpec, ServerSetup


def build(setup: ServerSetup) -> FedMerge:
    settings: FedMergeConfig = setup.config.method
    thetas = initial_global_models(setup.model, settings.num_global_models, setup.config.seed)
    return FedMerge(global_models=thetas, mu=settings.mu, lr_w=settings.lr_w,
                    lr_theta=settings.lr_theta, w_tensors=settings.w_tensors,
                    w_step=settings.w_step, **setup.common())


SPEC = MethodSpec("fedmerge", config=FedMergeConfig, build=build)
