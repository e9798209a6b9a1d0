"""FedMerge (arXiv 2504.06768)."""

from pollen.adapters import head_tensor_names
from pollen.errors import ConfigError

from strategies.fedmerge.config import FedMergeConfig
from strategies.fedmerge.strategy import FedMerge, initial_global_models
from strategies.spec import MethodSpec, ServerSetup


def build(setup: ServerSetup) -> FedMerge:
    settings: FedMergeConfig = setup.config.method
    thetas = initial_global_models(setup.model, settings.num_global_models, setup.config.seed)
    has_head = bool(head_tensor_names(thetas[0]))
    if settings.w_tensors == "head" and not has_head:
        raise ConfigError(f"fedmerge.w-tensors = head, but model '{setup.config.model}' has no "
                          "classifier head among its travelling tensors (a causal LM's LoRA): "
                          "use all or auto")
    w_tensors = settings.w_tensors if settings.w_tensors != "auto" else (
        "head" if has_head else "all")
    return FedMerge(global_models=thetas, mu=settings.mu, lr_w=settings.lr_w,
                    lr_theta=settings.lr_theta, w_tensors=w_tensors, w_step=settings.w_step,
                    **setup.common())


SPEC = MethodSpec("fedmerge", config=FedMergeConfig, build=build)
