"""What travels: LoRA adapters plus the classifier head for transformers, all weights for
small vision nets. Strategies see only named float32 numpy arrays.

peft's ``get_peft_model_state_dict`` / ``set_peft_model_state_dict`` define the adapter
tensors and their names; for plain modules the whole ``state_dict`` travels.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch
from torch import nn


class LayoutError(ValueError):
    """Received tensors do not match the model's travelling tensors."""


def is_adapter_model(model: nn.Module) -> bool:
    """Whether peft wrapped the model. Only a process that imported peft can hold a
    PeftModel, so a process that trains a plain model (the CNN) is spared peft's import
    (about 3 s, transformers with it): in deployment every message is a fresh process."""
    peft = sys.modules.get("peft")
    return peft is not None and isinstance(model, peft.PeftModel)


def _travelling_tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    """peft's adapter state dict; for other models the trainable parameters (all of the
    CNN, DeMA's adapters and head)."""
    if is_adapter_model(model):
        from peft import get_peft_model_state_dict

        return get_peft_model_state_dict(model)
    return {name: p for name, p in model.named_parameters() if p.requires_grad}


def travelling_state(model: nn.Module) -> dict[str, np.ndarray]:
    """Copies (float32, on the CPU) of the tensors that leave this process."""
    return {name: tensor.detach().to("cpu", torch.float32).numpy().copy()
            for name, tensor in _travelling_tensors(model).items()}


def travelling_module_names(model: nn.Module) -> dict[str, str]:
    """Travelling tensor name -> the model's own parameter or buffer name.

    peft names adapter tensors without the adapter name (``lora_A.weight`` for the
    parameter ``lora_A.default.weight``); ``torch.func.functional_call`` needs the module
    names. peft's state dict shares storage with the parameters, so storage identity gives
    the mapping without re-implementing peft's renaming rules.
    """
    by_storage = {tensor.data_ptr(): name for name, tensor in
                  [*model.named_parameters(), *model.named_buffers()]}
    return {name: by_storage[tensor.data_ptr()]
            for name, tensor in _travelling_tensors(model).items()}


def layout(state: Mapping[str, np.ndarray]) -> dict[str, tuple[int, ...]]:
    return {name: tuple(array.shape) for name, array in state.items()}


def check_layout(expected: Mapping[str, tuple[int, ...]], received: Mapping[str, np.ndarray],
                 what: str) -> None:
    """Raise LayoutError naming every missing, unexpected or misshapen tensor."""
    problems = []
    missing = sorted(set(expected) - set(received))
    unexpected = sorted(set(received) - set(expected))
    if missing:
        problems.append(f"missing {len(missing)} tensor(s), e.g. {missing[:3]}")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected tensor(s), e.g. {unexpected[:3]}")
    for name in sorted(set(expected) & set(received)):
        shape = tuple(np.shape(received[name]))
        if shape != tuple(expected[name]):
            problems.append(f"'{name}' has shape {shape}, expected {tuple(expected[name])}")
    if problems:
        raise LayoutError(f"{what} does not match the model: " + "; ".join(problems))


def load_travelling_state(model: nn.Module, state: Mapping[str, np.ndarray],
                          what: str = "received tensors") -> None:
    """Overwrite the model's travelling tensors after checking names and shapes."""
    check_layout(layout(travelling_state(model)), state, what)
    device = next(model.parameters()).device
    tensors = {name: torch.as_tensor(np.asarray(array, dtype=np.float32), device=device)
               for name, array in state.items()}
    if is_adapter_model(model):
        from peft import set_peft_model_state_dict

        set_peft_model_state_dict(model, tensors)
    else:  # check_layout has matched the names: strict=False only skips frozen weights
        model.load_state_dict(tensors, strict=False)


# The head module's name: "classifier" in Pollen's BERTs and the CNN, "score" in
# transformers' decoder classifiers (LlamaForSequenceClassification).
HEAD_NAMES = ("classifier", "score")


def is_head(name: str) -> bool:
    """Whether a parameter, tensor or module name lies in the classifier head, which is
    always trained and always travels."""
    return any(part in HEAD_NAMES for part in name.split("."))


def head_tensor_names(names) -> list[str]:
    """The classifier head's tensors among travelling tensor names."""
    return [name for name in names if is_head(name)]


def reinitialise_travelling(model: nn.Module, seed: int) -> dict[str, np.ndarray]:
    """Fresh, seeded values for the travelling tensors, as at construction time.

    LoRA layers get peft's default init (A random, B zero, so the backbone's function is
    unchanged); every other trainable leaf module (the head, the CNN's layers) its own
    ``reset_parameters``. The frozen backbone is untouched, so models re-initialised with
    different seeds can still be merged. Returns the new travelling state.
    """
    from peft.tuners.lora import LoraLayer

    torch.manual_seed(seed)
    lora_layers = [m for m in model.modules() if isinstance(m, LoraLayer)]
    inside_lora = {id(sub) for layer in lora_layers for sub in layer.modules()}
    for layer in lora_layers:
        for adapter in layer.lora_A:
            layer.reset_lora_parameters(adapter, init_lora_weights=True)
    for module in model.modules():
        if (id(module) not in inside_lora and hasattr(module, "reset_parameters")
                and not list(module.children())
                and any(p.requires_grad for p in module.parameters(recurse=False))):
            module.reset_parameters()
    return travelling_state(model)


def save_final_model(model: nn.Module, out_dir: Path) -> None:
    """The model's own ``save_pretrained`` where it has one: peft's format for LoRA
    (adapter_config.json + adapter_model.safetensors, loadable with
    ``PeftModel.from_pretrained``), DeMA's (``pollen.dema.load_dema_adapter``); otherwise
    model.safetensors with every weight."""
    from safetensors.torch import save_file

    out_dir.mkdir(parents=True, exist_ok=True)
    if hasattr(model, "save_pretrained"):
        model.save_pretrained(out_dir)
        return
    save_file({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()},
              out_dir / "model.safetensors")
