"""DeMA injected into a transformers model.

Every target linear layer (``DemaConfig.target_modules``, matched on the last part of
its name) inside ``encoder.layer.<l>`` (BERT-like encoders) or ``layers.<l>`` (Llama-like
decoders) of an L-layer backbone becomes a ``DemaLinear`` that uses bank
``DemaConfig.bank_of(l, L)`` of its module: floor(l B / L) (methods.md: layers at the same
relative depth share experts), or with B = 0 bank l (absolute layer index: for families
that are prefixes of one checkpoint, as MiniLM-L2/L4/L6, layer l is the same pretrained
layer in every family that has it).

Banks are keyed by the role a target module plays in attention (``ROLES``: BERT's
``query`` and Llama's ``q_proj`` are both ``q``), so an encoder and a decoder family share
the experts of their query and value projections; a module without a role is its own key.

Tensor names (what travels): ``banks.<b>.<role>.experts`` / ``.gate`` (the shared
experts), ``backbone.<...>.down.weight`` / ``.up.weight`` (D_f, U_f) and the classifier
head (``backbone.classifier.*``). Every DeMA tensor is seeded by its place (bank and
module; projections by layer, module and width), not by family, so tensors that
HeteroTune shares start equal in every family that holds them.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict
from pathlib import Path

import torch
from torch import nn

from pollen.adapters import is_head
from pollen.dema.config import DemaConfig
from pollen.dema.layer import DemaLinear, ExpertBank
from pollen.errors import ConfigError
from pollen.seeding import derive_seed

SHARED_PREFIX = "banks."
_LAYER_INDEX = re.compile(r"(?:^|\.)layers?\.(\d+)\.")
ROLES = {"query": "q", "q_proj": "q", "key": "k", "k_proj": "k", "value": "v",
         "v_proj": "v", "o_proj": "o"}


def role_of(module: str) -> str:
    return ROLES.get(module, module)


class DemaModel(nn.Module):
    def __init__(self, backbone: nn.Module, banks: nn.ModuleDict, config: DemaConfig,
                 family: str) -> None:
        super().__init__()
        self.backbone, self.banks = backbone, banks
        self.dema_config, self.family = config, family

    def forward(self, **inputs):
        return self.backbone(**inputs)

    def generate(self, **inputs):
        """A causal LM backbone's own generation, through its DeMA layers."""
        return self.backbone.generate(**inputs)

    @property
    def generation_config(self):
        return self.backbone.generation_config

    def save_pretrained(self, out_dir: Path) -> None:
        save_dema_adapter(self, Path(out_dir))


def inject_dema(backbone: nn.Module, config: DemaConfig, family: str) -> DemaModel:
    """Freeze the backbone except its classifier head and add DeMA layers in place."""
    num_layers = backbone.config.num_hidden_layers

    def bank(b: int, role: str) -> ExpertBank:
        torch.manual_seed(derive_seed(config.seed, "dema-bank", b, role))
        return ExpertBank(config.rank, config.experts)

    roles = sorted({role_of(m) for m in config.target_modules})
    banks = nn.ModuleDict({
        str(b): nn.ModuleDict({role: bank(b, role) for role in roles})
        for b in range(num_layers if config.absolute else config.banks)})
    targets = [(name, module) for name, module in backbone.named_modules()
               if name.rsplit(".", 1)[-1] in config.target_modules
               and isinstance(module, nn.Linear) and _LAYER_INDEX.search(name)]
    missing = set(config.target_modules) - {name.rsplit(".", 1)[-1] for name, _ in targets}
    if missing:
        raise ConfigError(f"DeMA target modules {sorted(missing)} are not linear layers of "
                          f"the transformer layers of '{family}'")
    for parameter in backbone.parameters():
        parameter.requires_grad = False
    for name, linear in targets:
        layer = int(_LAYER_INDEX.search(name).group(1))
        module = name.rsplit(".", 1)[-1]
        parent = backbone.get_submodule(name.rsplit(".", 1)[0])
        torch.manual_seed(derive_seed(config.seed, "dema-projection", layer, module,
                                      linear.in_features, linear.out_features))
        shared = banks[str(config.bank_of(layer, num_layers))][role_of(module)]
        setattr(parent, module, DemaLinear(linear, shared, config.rank,
                                           config.alpha / config.rank))
    for name, parameter in backbone.named_parameters():
        if is_head(name):
            parameter.requires_grad = True
    return DemaModel(backbone, banks, config, family)


def is_shared(name: str) -> bool:
    """An expert bank's tensor (shared by every family holding it)."""
    return name.startswith(SHARED_PREFIX)


def is_projection(name: str) -> bool:
    """A DeMA layer's D (``down``) or U (``up``)."""
    return name.endswith((".down.weight", ".up.weight"))


ADAPTER_FILE = "dema_adapter.safetensors"
CONFIG_FILE = "dema_config.json"


def save_dema_adapter(model: DemaModel, out_dir: Path) -> Path:
    """The travelling tensors (shared banks, family projections, head) and the settings."""
    from safetensors.torch import save_file

    from pollen.adapters import travelling_state

    # 0 classes: a causal LM (task instruct), as the registry's manifest says it
    num_classes = 0 if model.backbone.can_generate() else model.backbone.config.num_labels
    settings = {**asdict(model.dema_config), "family": model.family,
                "num_classes": num_classes}
    (out_dir / CONFIG_FILE).write_text(json.dumps(settings, indent=2))
    tensors = {k: torch.from_numpy(v) for k, v in travelling_state(model).items()}
    save_file(tensors, out_dir / ADAPTER_FILE)
    return out_dir / ADAPTER_FILE


def load_dema_adapter(folder: Path) -> DemaModel:
    """A saved DeMA adapter on its own backbone: the family's pretrained (or seeded) base
    built by ``pollen.models.build_backbone``, DeMA injected, the saved tensors loaded."""
    from safetensors.numpy import load_file

    from pollen.adapters import load_travelling_state
    from pollen.models import build_backbone

    settings = json.loads((Path(folder) / CONFIG_FILE).read_text())
    family, num_classes = settings.pop("family"), settings.pop("num_classes")
    config = DemaConfig(**{**settings, "target_modules": tuple(settings["target_modules"])})
    model = inject_dema(build_backbone(family, num_classes, config.seed), config, family)
    load_travelling_state(model, load_file(Path(folder) / ADAPTER_FILE),
                          what=f"DeMA adapter in {folder}")
    return model
