"""The models Pollen builds by name, and what input each takes.

Kept apart from ``pollen.models`` (which imports torch and transformers) so that the run
config can check a model name without building anything.
"""

from __future__ import annotations

from pollen.errors import ConfigError

MODEL_NAMES = ("cnn", "minilm", "minilm-l2", "minilm-l4", "tiny-bert", "tiny-bert-w64")
# Tiny random BERTs for tests: (hidden size, layers, heads); MiniLM's vocabulary.
TINY_BERTS = {"tiny-bert": (32, 2, 2), "tiny-bert-w64": (64, 3, 4)}
TRUNCATED_MINILM_LAYERS = {"minilm": 6, "minilm-l4": 4, "minilm-l2": 2}


# What each model trains well with, for the keys a run leaves at "auto": the CNN and the
# random tiny BERTs at AdamW 0.01; pretrained transformers with LoRA at 0.003 (MiniLM on
# AG News: 0.01 gave 0.397 accuracy after 2 rounds, the majority class; 0.003 is what
# docs/benchmarks.md's AG News rows use).
RECOMMENDED = {"cnn": {"lr": 0.01, "batch-size": 32},
               "tiny-bert": {"lr": 0.01, "batch-size": 32},
               "tiny-bert-w64": {"lr": 0.01, "batch-size": 32},
               "pretrained": {"lr": 0.003, "batch-size": 32}}


def recommended(model_name: str, key: str) -> float | int:
    """The model's recommended value of ``key``; MiniLM (any depth) and ``hf:`` models
    share the pretrained transformers' row."""
    return RECOMMENDED.get(model_name, RECOMMENDED["pretrained"])[key]


def modality_of(model_name: str) -> str:
    return "image" if model_name == "cnn" else "text"


def check_model_name(key: str, name: str) -> None:
    if name.startswith("hf:"):
        if name == "hf:":
            raise ConfigError(f"{key} 'hf:' needs a model id, e.g. hf:bert-base-uncased")
        return
    if name not in MODEL_NAMES:
        raise ConfigError(f"unknown {key} '{name}'; choose one of: {', '.join(MODEL_NAMES)} "
                          "or hf:<id>")


def check_compatible(model_name: str, modality: str) -> None:
    if modality_of(model_name) != modality:
        raise ConfigError(f"model '{model_name}' takes {modality_of(model_name)} input but "
                          f"the dataset holds {modality} examples")
