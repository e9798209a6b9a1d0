"""The run configuration: one typed, validated record shared by server and clients.

Flower hands an app its run config as a flat mapping of TOML values: the keys of
``[tool.flwr.app.config]`` as they are, and those of a sub-table
``[tool.flwr.app.config.<method>]`` as ``<method>.<key>``, merged with ``--run-config``.
The shared keys are ``RunConfig``'s fields; each method declares its own keys once, as a
frozen ``Section`` dataclass in ``strategies/<method>/config.py``. This module knows no
method: ``RunConfig.from_mapping`` is given the sections (``strategies.run_config`` does
that), and ``RunConfig.method`` holds the section of the run's strategy.

Every field is declared with ``pollen.settings.setting(default, *checks)``; the checks run
when the record is built, and a failing one names the key. ``run_simulation`` hands the app no run
config, so the defaults live here; ``tests/test_config.py`` keeps pyproject.toml and the
README equal to them. The server sends the resolved record to every client inside each
message, so a client never depends on what its own process was started with.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pollen.catalog import (MODEL_NAMES, TASKS, check_model_name, is_causal, is_decoder,
                            recommended)
from pollen.errors import ConfigError
from pollen.optimizer import LocalOptimizer
from pollen.settings import (AUTO, Section, Settings, at_least, fraction, key_of, non_empty_list,
                             non_negative, one_of, open_fraction, positive, setting,
                             split_list)

# What a method's config.py needs, from one place.
__all__ = ["AUTO", "ConfigError", "RunConfig", "Section", "setting", "at_least", "positive",
           "non_negative", "one_of", "fraction", "open_fraction", "non_empty_list",
           "split_list"]

PARTITIONER_NAMES = ("iid", "dirichlet", "pathological", "natural-id")
DEVICE_NAMES = ("auto", "cpu", "cuda")
TABLE_SUFFIXES = (".csv", ".tsv", ".jsonl", ".parquet")
WIRE_DTYPES = ("float32", "float16", "bfloat16", "int8")  # pollen.wire.ENCODINGS
DIGITS_SHIFTED = "digits-shifted"
# Keys that strategies add to a message's config, not run-config keys.
MESSAGE_ONLY_KEYS = frozenset({"server-round"})


def _sampling_fraction(key: str, value: float) -> None:
    if not 0.0 < value <= 1.0:
        raise ConfigError(f"{key} must be in (0, 1], got {value}")


def _momentum(key: str, value: float) -> None:
    if not 0.0 <= value < 1.0:
        raise ConfigError(f"{key} must be in [0, 1), got {value}")


@dataclass(frozen=True)
class RunConfig(Settings):
    """The shared keys of ``[tool.flwr.app.config]``, and the strategy's section."""

    strategy: str = setting("fedavg")  # the one method name here: the default run
    num_server_rounds: int = setting(10, at_least(1))
    fraction_train: float = setting(1.0, _sampling_fraction)
    # 0: no client evaluation, Flower's meaning (``FedAvg.configure_evaluate``); the
    # server still evaluates every round.
    fraction_evaluate: float = setting(1.0, fraction)
    local_epochs: int = setting(2, at_least(1))
    max_steps: int = setting(0, at_least(0))
    lr: float = setting(AUTO, positive, auto=True)
    optimizer: str = setting("adamw", one_of("adamw", "sgd"))
    momentum: float = setting(0.0, _momentum)
    weight_decay: float = setting(0.0, non_negative)
    # The classifier head's lr as a multiple of lr; 0 = a frozen head (FedBABU).
    head_lr_scale: float = setting(1.0, non_negative)
    # FedLC's tau (pollen.training.calibration_shift): 0 trains on the plain logits.
    logit_calibration: float = setting(0.0, non_negative)
    # Inverse-frequency class weights in each client's loss (pollen.training.
    # balanced_class_weights).
    class_balanced_loss: bool = setting(False)
    batch_size: int = setting(AUTO, at_least(1), auto=True)
    seed: int = setting(42)
    output_dir: str = setting("pollen-runs")
    run_name: str = setting("")
    task: str = setting("classify", one_of(*TASKS))
    dataset: str = setting("digits")
    text_column: str = setting("")
    label_column: str = setting("label")
    class_names: str = setting("")
    instruction_column: str = setting("instruction")
    input_column: str = setting("input")
    response_column: str = setting("output")
    max_new_tokens: int = setting(8, at_least(1))
    lr_schedule: str = setting("constant", one_of("constant", "cosine", "step"))
    lr_min: float = setting(0.0, non_negative)
    lr_step_round: int = setting(0, at_least(0))
    model: str = setting("cnn", check_model_name)
    max_seq_len: int = setting(64, at_least(8))
    gradient_checkpointing: bool = setting(False)
    bf16: bool = setting(False)
    load_in_4bit: bool = setting(False)
    partitioner: str = setting("dirichlet", one_of(*PARTITIONER_NAMES))
    dirichlet_alpha: float = setting(0.5, positive)
    pathological_classes: int = setting(2, at_least(1))
    partition_column: str = setting("")
    server_test_fraction: float = setting(0.2, open_fraction)
    local_test_fraction: float = setting(0.2, open_fraction)
    lora_r: int = setting(8, at_least(1))
    lora_alpha: int = setting(16, at_least(1))
    lora_target_modules: str = setting(AUTO, non_empty_list, auto=True)
    client_rotation: bool = setting(False)
    server_data_fraction: float = setting(0.0)
    server_data: str = setting("")
    server_data_labeled: bool = setting(True)
    server_data_holdout: float = setting(0.25, open_fraction)
    server_data_rotation: float = setting(30.0)  # degrees, for server-data = digits-shifted
    model_families: str = setting("")
    family_assignment: str = setting("")
    client_label_noise: float = setting(0.0, fraction)
    noisy_client_fraction: float = setting(1.0, fraction)
    checkpoint_every: int = setting(1, at_least(1))
    keep_checkpoints: int = setting(3, at_least(1))
    resume: str = setting("")
    min_replies: int = setting(1, at_least(1))
    update_norm_limit: float = setting(0.0, non_negative)
    update_norm_action: str = setting("reject", one_of("reject", "clip"))
    wire_dtype: str = setting("float32", one_of(*WIRE_DTYPES))
    registry_address: str = setting("")
    registry_root_certificates: str = setting("")
    device: str = setting("auto", one_of(*DEVICE_NAMES))
    round_timeout: float = setting(3600.0, positive)
    min_clients: int = setting(1, at_least(1))
    # The run's strategy's section (None for a method without keys); not a key itself.
    method: Section | None = None
    # Keys that were "auto", with the model whose recommendation they took.
    recommended_by: tuple[tuple[str, str], ...] = field(default=(), compare=False)

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any],
                     sections: Mapping[str, type[Section]] = {}) -> RunConfig:
        """Build from Flower's flat keys: shared keys, and ``<method>.<key>`` for the
        ``sections`` (method name -> its Section class). Every section present is
        validated; ``method`` is the strategy's. Unknown keys, keys renamed into a
        section and wrong types raise ConfigError; ``server-round`` is ignored."""
        renamed = {old: section.prefix + new for section in sections.values()
                   for old, new in section.renamed.items()}
        shared: dict[str, Any] = {}
        by_section: dict[str, dict[str, Any]] = {name: {} for name in sections}
        for key, value in values.items():
            section, dot, own = key.partition(".")
            if dot:
                if section not in sections:
                    raise ConfigError(f"run-config key '{key}' names no method's section; "
                                      f"sections: {', '.join(sections) or 'none'}")
                by_section[section][own] = value
            elif key in renamed:
                raise ConfigError(f"run-config key '{key}' is now '{renamed[key]}' (a "
                                  "method's own keys live in [tool.flwr.app.config.<method>])")
            elif key not in MESSAGE_ONLY_KEYS:
                shared[key] = value
        parsed = {name: section.from_mapping(by_section[name])
                  for name, section in sections.items()}
        config = cls(**cls._kwargs(shared))
        return config.replace(method=parsed.get(config.strategy))

    def to_mapping(self) -> dict[str, Any]:
        """Every shared key, and the strategy section's keys (qualified)."""
        own = self.method.to_mapping() if self.method is not None else {}
        return {**super().to_mapping(), **own}

    def replace(self, **changes: Any) -> RunConfig:
        return dataclasses.replace(self, **changes)

    def client_mapping(self) -> dict[str, Any]:
        """The keys clients are sent: ``to_mapping``, except that ``lora-target-modules``
        left at "auto" is sent as "auto", so that each client resolves it for its own
        family (``for_family``)."""
        mapping = self.to_mapping()
        if "lora-target-modules" in dict(self.recommended_by):
            mapping["lora-target-modules"] = AUTO
        return mapping

    def for_family(self, family: str) -> RunConfig:
        """The config a family's model is built from: ``model`` = the family, and
        ``lora-target-modules``, when the run left it at "auto", the family's own (an
        encoder's query/value, a decoder's q/k/v/o projections)."""
        config = self.replace(model=family)
        if "lora-target-modules" in dict(self.recommended_by):
            config = config.replace(lora_target_modules=recommended(
                family, "lora-target-modules", self.task, self.optimizer))
        return config

    def __post_init__(self) -> None:
        self._resolve_auto()
        self._check_fields()
        self.validate()

    def _resolve_auto(self) -> None:
        """Each "auto" key takes the run model's recommended value (frozen dataclass:
        set once, here, before any check)."""
        resolved = dict(self.recommended_by)
        for f in self._key_fields():
            if f.metadata["auto"] and getattr(self, f.name) == AUTO:
                key = key_of(f.name)
                object.__setattr__(self, f.name, recommended(self.model, key, self.task,
                                                             self.optimizer))
                resolved[key] = self.model
        object.__setattr__(self, "recommended_by", tuple(sorted(resolved.items())))

    def sources(self) -> dict[str, str]:
        """Where each shared key's value came from: the run config, or a model's
        recommendation (for keys left at "auto")."""
        by_model = dict(self.recommended_by)
        return {key: f"recommended for model '{by_model[key]}'" if key in by_model
                else "run config" for key in RunConfig.keys()}

    def to_json(self) -> str:
        return json.dumps(self.to_mapping(), indent=2, sort_keys=True)

    def round_lr(self, server_round: int) -> float:
        """The clients' learning rate in ``server_round`` (1-based). 'cosine' is
        FlowerTune's per-round schedule,
            lr_min + (lr - lr_min) (1 + cos(pi server_round / num_server_rounds)) / 2,
        which reaches lr_min in the last round. 'step' keeps lr until round
        ``lr-step-round`` and trains at lr_min from that round on (Mosaic's official
        schedule drops the clients' lr right after distillation)."""
        if self.lr_schedule == "constant":
            return self.lr
        if self.lr_schedule == "step":
            return self.lr if server_round < self.lr_step_round else self.lr_min
        phase = math.pi * server_round / self.num_server_rounds
        return self.lr_min + 0.5 * (self.lr - self.lr_min) * (1 + math.cos(phase))

    @property
    def local_optimizer(self) -> LocalOptimizer:
        return LocalOptimizer(self.optimizer, self.momentum, self.weight_decay,
                              self.head_lr_scale)

    @property
    def class_name_list(self) -> list[str]:
        return split_list(self.class_names)

    @property
    def target_modules(self) -> list[str]:
        return split_list(self.lora_target_modules)

    def check_server_files(self) -> None:
        """The files the server reads exist on this machine. Not part of ``validate``:
        every client validates the config it is sent, and in a deployment the server's
        dataset, server data and certificates are not on the clients' machines."""
        files = [("dataset file", None if self.dataset == "digits" or
                  self.dataset.startswith("hf:") else Path(self.dataset)),
                 ("server-data file", self.server_data_file),
                 ("registry-root-certificates",
                  Path(self.registry_root_certificates) if self.registry_root_certificates
                  else None)]
        for what, path in files:
            if path is not None and not path.expanduser().is_file():
                raise ConfigError(f"{what} not found: {path.expanduser()}")
        if self.resume and not (Path(self.resume).expanduser() / "config.json").is_file():
            raise ConfigError(f"resume: {self.resume} is not a Pollen run folder "
                              "(no config.json)")

    def validate(self) -> None:
        """Checks across keys, that need no data and no model. The strategy name, and
        what a strategy asks of the shared keys, are checked by ``strategies``."""
        if self.registry_address and not re.fullmatch(r"[^\s:]+:\d{1,5}|\[[0-9a-fA-F:]+\]:\d{1,5}",
                                                       self.registry_address):
            raise ConfigError(f"registry-address must be HOST:PORT, got '{self.registry_address}'")
        if not self.output_dir:
            raise ConfigError("output-dir is empty")
        if self.momentum and self.optimizer != "sgd":
            raise ConfigError(f"momentum ({self.momentum:g}) applies to optimizer 'sgd' only; "
                              f"optimizer is '{self.optimizer}'")
        if self.head_lr_scale != 1.0 and self.task == "instruct":
            raise ConfigError(f"head-lr-scale ({self.head_lr_scale:g}) scales the lr of a "
                              "classifier head; task 'instruct' trains a causal LM, which "
                              "has none")
        if self.lr_schedule != "constant" and self.lr_min >= self.lr:
            raise ConfigError(f"lr-min ({self.lr_min:g}) must be below lr ({self.lr:g}) for "
                              f"lr-schedule '{self.lr_schedule}'")
        if self.lr_schedule == "step" and not 2 <= self.lr_step_round <= self.num_server_rounds:
            raise ConfigError(f"lr-schedule 'step' needs lr-step-round, the first round at "
                              f"lr-min, in 2..num-server-rounds ({self.num_server_rounds}); "
                              f"got {self.lr_step_round}")
        if self.gradient_checkpointing and self.model == "cnn":
            raise ConfigError("gradient-checkpointing recomputes transformer layers; model "
                              "'cnn' has none")
        low_precision = [k for k, on in (("bf16", self.bf16), ("load-in-4bit", self.load_in_4bit))
                         if on]
        if low_precision and not is_causal(self.model, self.task):
            raise ConfigError(f"{' and '.join(low_precision)} store(s) a causal LM's frozen "
                              f"weights in low precision (task 'instruct'); model "
                              f"'{self.model}' with task '{self.task}' is not one")
        if self.bf16 and self.load_in_4bit:
            raise ConfigError("bf16 and load-in-4bit both set the frozen weights' format: "
                              "choose one (4-bit weights already compute in bfloat16)")
        if (self.partitioner == "natural-id") != bool(self.partition_column):
            raise ConfigError("partitioner 'natural-id' and partition-column go together: "
                              f"got partitioner '{self.partitioner}' and partition-column "
                              f"'{self.partition_column}'")
        if "/" in self.run_name or self.run_name in (".", ".."):
            raise ConfigError(f"run-name must be a plain folder name, got '{self.run_name}'")
        self._validate_server_data()
        self._validate_families()
        self._validate_dataset()

    @property
    def families(self) -> list[str]:
        """The backbones clients run: ``model-families``, or the one ``model``."""
        return split_list(self.model_families) or [self.model]

    @property
    def family_map(self) -> dict[str, str]:
        """``family-assignment`` as client id -> family."""
        return dict(p.split(":", 1) for p in split_list(self.family_assignment))

    def _validate_families(self) -> None:
        families = self.families
        if len(set(families)) != len(families):
            raise ConfigError(f"model-families names a family twice: {self.model_families}")
        for family in families if self.model_families else []:
            check_model_name("model-families entry", family)
        if self.model_families and "cnn" in families and len(families) > 1:
            raise ConfigError("model-families mixes the image model 'cnn' with text models")
        if self.model_families and self.task == "instruct":
            not_causal = [f for f in families if not is_causal(f, self.task)]
            if not_causal:
                raise ConfigError(f"model-families: task 'instruct' needs causal LMs, and "
                                  f"{', '.join(not_causal)} is not one; allowed: "
                                  f"{', '.join(n for n in MODEL_NAMES if is_decoder(n))}, "
                                  "hf:<id> or a .gguf path (with task 'classify', encoders "
                                  "and decoders mix: a decoder then gets a class head)")
        for pair in split_list(self.family_assignment):
            client, _, family = pair.partition(":")
            if not client or family not in families:
                raise ConfigError(f"family-assignment entry '{pair}' must be client:family "
                                  f"with a family of model-families ({', '.join(families)})")

    @property
    def has_server_data(self) -> bool:
        return self.server_data_fraction > 0.0 or self.server_data_file is not None

    @property
    def server_data_file(self) -> Path | None:
        """The server-data file, when ``server-data`` names one."""
        if self.server_data in ("", DIGITS_SHIFTED):
            return None
        return Path(self.server_data).expanduser()

    def _validate_server_data(self) -> None:
        """The hybrid setting: what the server holds, checked before any data is read."""
        if not (self.server_data_fraction == 0.0 or 0.0 < self.server_data_fraction < 1.0):
            raise ConfigError("server-data-fraction must be in (0, 1), or 0 for no server-held "
                              f"data; got {self.server_data_fraction}")
        file = self.server_data_file
        if file is not None:
            if file.suffix.lower() not in TABLE_SUFFIXES:
                raise ConfigError(f"unknown server-data '{self.server_data}': use '' (the held-out "
                                  f"share of the pool), '{DIGITS_SHIFTED}' or a path to a "
                                  f"{'/'.join(TABLE_SUFFIXES)} file")
        elif self.server_data_fraction == 0.0 and self.server_data:
            raise ConfigError(f"server-data '{self.server_data}' transforms the held-out share "
                              "of the pool: set server-data-fraction in (0, 1)")
        if self.server_data == DIGITS_SHIFTED and self.dataset != "digits":
            raise ConfigError(f"server-data '{DIGITS_SHIFTED}' needs dataset 'digits', got "
                              f"'{self.dataset}'")

    def _validate_dataset(self) -> None:
        if self.dataset == "digits" or self.dataset.startswith("hf:"):
            if self.dataset == "hf:":
                raise ConfigError("dataset 'hf:' needs a dataset id, e.g. hf:ag_news")
            return
        path = Path(self.dataset).expanduser()
        if path.suffix.lower() not in TABLE_SUFFIXES:
            raise ConfigError(
                f"unknown dataset '{self.dataset}': use 'digits', 'hf:<id>' or a path to a "
                f"{'/'.join(TABLE_SUFFIXES)} file"
            )
