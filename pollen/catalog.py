"""The models Pollen builds by name, and what input each takes.

Kept apart from ``pollen.models`` (which imports torch and transformers) so that the run
config can check a model name without building anything.
"""

from __future__ import annotations

from pollen.errors import ConfigError

MODEL_NAMES = ("cnn", "minilm", "minilm-l2", "minilm-l4", "tiny-bert", "tiny-bert-w64",
               "smollm2", "smollm2-l10", "smollm2-l20", "tiny-llama", "tiny-llama-l1")
# Tiny random BERTs for tests: (hidden size, layers, heads); MiniLM's vocabulary.
TINY_BERTS = {"tiny-bert": (32, 2, 2), "tiny-bert-w64": (64, 3, 4)}
# Causal LMs by name; any ``hf:<id>`` or ``.gguf`` path is one too when task = instruct.
# tiny-llama: a random 2-layer Llama (hidden 64) with SmolLM2's tokenizer, for tests.
# A "-l<N>" name is the first N decoder layers of its base (embeddings, final norm and LM
# head kept): families of one checkpoint that differ in depth, as FederatedScope-LLM's
# offsite-tuning drops layers.
TRUNCATED_CAUSAL_LAYERS = {"smollm2-l10": ("smollm2", 10), "smollm2-l20": ("smollm2", 20),
                           "tiny-llama-l1": ("tiny-llama", 1)}
CAUSAL_LMS = ("smollm2", "tiny-llama", *TRUNCATED_CAUSAL_LAYERS)
TASKS = ("classify", "instruct")
TRUNCATED_MINILM_LAYERS = {"minilm": 6, "minilm-l4": 4, "minilm-l2": 2}


# What each model trains well with, for the keys a run leaves at "auto": the CNN and the
# random tiny BERTs at AdamW 0.01; pretrained transformers with LoRA at 0.003 (MiniLM on
# AG News: 0.01 gave 0.397 accuracy after 2 rounds, the majority class; 0.003 is what
# docs/benchmarks.md's AG News rows use).
# LoRA goes on BERT's query/value projections, and on a Llama-like decoder's q/k/v/o
# (what FlowerTune and OpenFedLLM adapt). Causal LMs: lr 0.001, batch 8 (LoRA on SmolLM2;
# bench/llm.py).
ENCODER_TARGETS, DECODER_TARGETS = "query,value", "q_proj,k_proj,v_proj,o_proj"
RECOMMENDED = {"cnn": {"lr": 0.01, "batch-size": 32, "lora-target-modules": ENCODER_TARGETS},
               "tiny-bert": {"lr": 0.01, "batch-size": 32,
                             "lora-target-modules": ENCODER_TARGETS},
               "tiny-bert-w64": {"lr": 0.01, "batch-size": 32,
                                 "lora-target-modules": ENCODER_TARGETS},
               "pretrained": {"lr": 0.003, "batch-size": 32,
                              "lora-target-modules": ENCODER_TARGETS},
               "causal": {"lr": 0.001, "batch-size": 8, "lora-target-modules": DECODER_TARGETS},
               # a decoder with a class head (task classify): the causal LMs' values
               "decoder-classifier": {"lr": 0.001, "batch-size": 8,
                                      "lora-target-modules": DECODER_TARGETS}}

# Plain SGD's lr, for optimizer = sgd left at lr "auto" (docs/benchmarks/
# labelskew-sgd-lr.md: FedAvg over 4 IID clients, 3 rounds): the CNN 0.3 (0.589 on
# digits, against 0.311 at 0.1 and 0.100 at 1), the tiny BERTs 0.1 (0.963; 0.794 at 0.05,
# 0.744 at 0.3). MiniLM with LoRA: 0.05 climbed every round at every seed of the
# two-class Dirichlet 0.1 bench (docs/benchmarks.md section 7) where 0.003 stalled near
# the majority rate. Causal LMs have no measured SGD lr: lr "auto" with SGD is refused.
SGD_LR = {"cnn": 0.3, "tiny-bert": 0.1, "tiny-bert-w64": 0.1, "pretrained": 0.05}


def is_decoder(model_name: str) -> bool:
    """A decoder LM by name (SmolLM2, tiny-llama, their depth families, a .gguf file)."""
    return model_name in CAUSAL_LMS or model_name.endswith(".gguf")


def is_causal(model_name: str, task: str) -> bool:
    """Whether ``model_name`` is built as a causal LM (prompt -> response): a decoder, or
    any ``hf:`` id, when the task is instruction tuning. With task 'classify' a decoder
    is a sequence classifier (``pollen.models.build_decoder_classifier``)."""
    return task == "instruct" and (is_decoder(model_name) or model_name.startswith("hf:"))


def recommended(model_name: str, key: str, task: str = "classify",
                optimizer: str = "adamw") -> float | int | str:
    """The model's recommended value of ``key``; MiniLM (any depth) and ``hf:``
    classifiers share the pretrained transformers' row, causal LMs theirs. ``lr``
    follows the optimizer too: ``RECOMMENDED`` holds AdamW's, ``SGD_LR`` plain SGD's."""
    row = ("causal" if is_causal(model_name, task)
           else "decoder-classifier" if is_decoder(model_name) else model_name)
    row = row if row in RECOMMENDED else "pretrained"
    if key == "lr" and optimizer == "sgd":
        if row not in SGD_LR:
            raise ConfigError(f"lr 'auto' has no plain-SGD value for model '{model_name}' "
                              "(only AdamW's is measured for causal LMs): set lr, or use "
                              "optimizer='adamw'")
        return SGD_LR[row]
    return RECOMMENDED[row][key]


def modality_of(model_name: str, task: str = "classify") -> str:
    """What a model takes: 'image' (the CNN), 'text' (a sequence classifier) or
    'instruct' (a causal LM: prompt and response)."""
    if model_name == "cnn":
        return "image"
    return "instruct" if is_causal(model_name, task) else "text"


def check_model_name(key: str, name: str) -> None:
    if name.endswith(".gguf"):
        return
    if name.startswith("hf:"):
        if name == "hf:":
            raise ConfigError(f"{key} 'hf:' needs a model id, e.g. hf:bert-base-uncased")
        return
    if name not in MODEL_NAMES:
        raise ConfigError(f"unknown {key} '{name}'; choose one of: {', '.join(MODEL_NAMES)}, "
                          "hf:<id> or a path to a .gguf file")


def check_compatible(model_name: str, modality: str, task: str = "classify") -> None:
    takes = modality_of(model_name, task)
    if takes != modality:
        raise ConfigError(f"model '{model_name}' takes {takes} input but the dataset holds "
                          f"{modality} examples" + (
                              "; task 'instruct' needs a causal LM (smollm2, tiny-llama, "
                              "hf:<id>, a .gguf path)" if modality == "instruct" else
                              "; a causal LM needs task = 'instruct'" if takes == "instruct"
                              else ""))
