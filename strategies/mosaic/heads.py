"""A classifier's head and what comes into it: Mosaic's prototypes are k-means centres of
penultimate features (the head's input), and its meta model runs the experts' heads on
them. The head is found by name (``classifier``: the CNN's, and transformers' sequence
classifiers, also under peft's ModulesToSaveWrapper); a forward pre-hook records its
input, which works for any backbone without knowing its pooling.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn
from torch.utils.data import DataLoader

from pollen.adapters import travelling_module_names
from pollen.training import logits_of

# Pollen's BERTs' and the CNN's head. A decoder classifier's ``score`` reads every token's
# state before transformers picks the last one, so its input is no per-example feature:
# Mosaic refuses decoder families (``MosaicConfig.check_run``).
HEAD_NAME = "classifier"


def head_module_name(model: nn.Module) -> str:
    """The outermost module named ``classifier``."""
    names = [name for name, _ in model.named_modules() if name.split(".")[-1] == HEAD_NAME]
    if not names:
        raise ValueError(f"{type(model).__name__} has no module named '{HEAD_NAME}'")
    return min(names, key=lambda n: n.count("."))


@torch.no_grad()
def penultimate_features(model: nn.Module, loader: DataLoader, device: torch.device
                         ) -> tuple[torch.Tensor, torch.Tensor]:
    """(features, labels) of every example of ``loader``, in eval mode, on the CPU."""
    head = model.get_submodule(head_module_name(model))
    captured: list[torch.Tensor] = []
    hook = head.register_forward_pre_hook(lambda _, args: captured.append(args[0].detach()))
    features, labels = [], []
    try:
        model.to(device).eval()
        for batch in loader:
            captured.clear()
            logits_of(model, batch, device)
            features.append(captured[-1].float().cpu())
            labels.append(batch["label"])
    finally:
        hook.remove()
    return torch.cat(features), torch.cat(labels)


class HeadParams:
    """Which travelling tensors are the head's, under the head's own parameter names, so
    ``torch.func.functional_call(head, params, (features,))`` runs an expert's head."""

    def __init__(self, model: nn.Module) -> None:
        self.head_name = head_module_name(model)
        prefix = self.head_name + "."
        self.names = {travelling: module[len(prefix):]
                      for travelling, module in travelling_module_names(model).items()
                      if module.startswith(prefix)}
        if not self.names:
            raise ValueError(f"the head '{self.head_name}' has no travelling tensors")
        self.head = model.get_submodule(self.head_name)

    def logits(self, features: torch.Tensor, tensors: Mapping[str, torch.Tensor]
               ) -> torch.Tensor:
        params = {module: tensors[travelling] for travelling, module in self.names.items()}
        return torch.func.functional_call(self.head, params, (features,))
