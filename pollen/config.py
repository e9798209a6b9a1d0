"""The run configuration: one typed, validated record shared by server and clients.

Flower hands an app its run config as a flat mapping of TOML values
(``[tool.flwr.app.config]`` merged with ``--run-config``). ``run_simulation`` hands it
nothing, so the defaults live here too; ``tests/test_config.py`` keeps them equal to
pyproject.toml's. The server sends the resolved record to every client inside each
message, so a client never depends on what its own process was started with.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

PARTITIONER_NAMES = ("iid", "dirichlet", "pathological")
DEVICE_NAMES = ("auto", "cpu", "cuda")
TABLE_SUFFIXES = (".csv", ".tsv", ".jsonl", ".parquet")
WIRE_DTYPES = ("float32", "float16", "bfloat16", "int8")  # pollen.wire.ENCODINGS
DIGITS_SHIFTED = "digits-shifted"
GUIDED_GRANULARITIES = ("vector", "tensor")
# Strategies that federate clients running different backbones (``pollen.families``).
FAMILY_STRATEGIES = ("heterotune", "fedavg-per-family", "hetlora", "mosaic")
# Strategies whose server trains on server-held data (``server-data-fraction``/``server-data``).
SERVER_DATA_STRATEGIES = ("guided", "central")


class ConfigError(ValueError):
    """A run-config value is missing, of the wrong type, or out of range."""


@dataclass(frozen=True)
class RunConfig:
    """Every key of ``[tool.flwr.app.config]``; attribute ``a_b`` is key ``a-b``."""

    strategy: str = "fedavg"
    num_server_rounds: int = 10
    fraction_train: float = 1.0
    fraction_evaluate: float = 1.0
    local_epochs: int = 2
    lr: float = 0.01
    batch_size: int = 32
    seed: int = 42
    output_dir: str = "pollen-runs"
    run_name: str = ""
    dataset: str = "digits"
    text_column: str = ""
    label_column: str = "label"
    model: str = "cnn"
    max_seq_len: int = 64
    partitioner: str = "dirichlet"
    dirichlet_alpha: float = 0.5
    pathological_classes: int = 2
    server_test_fraction: float = 0.2
    local_test_fraction: float = 0.2
    lora_r: int = 8
    lora_alpha: int = 16
    lora_target_modules: str = "query,value"
    fedprox_mu: float = 0.01
    fedref_p: int = 3
    fedref_lambda: float = 0.1
    fedref_mu: float = 0.01
    fedref_client_prox: bool = True
    client_rotation: bool = False
    num_global_models: int = 3
    fedmerge_mu: float = 0.01
    lr_w: float = 100.0
    lr_theta: float = 1.0
    fedmerge_w_tensors: str = "head"
    fedmerge_w_step: str = "plain"
    server_data_fraction: float = 0.0
    server_data: str = ""
    server_data_labeled: bool = True
    server_data_holdout: float = 0.25
    unlabeled_loss: str = "im"
    atlas_size: int = 10
    max_staleness: int = 2
    guided_granularity: str = "vector"
    search_steps: int = 20
    search_lr: float = 0.1
    search_batch_size: int = 32
    eviction_patience: int = 3
    model_families: str = ""
    family_assignment: str = ""
    dema_rank: int = 8
    dema_experts: int = 4
    dema_banks: int = 2
    dema_target_modules: str = "query,value"
    cmga: bool = True
    hetlora_ranks: str = ""
    mosaic_warmup_rounds: int = 2
    mosaic_prototypes: int = 5
    mosaic_prototype_rounds: str = "latest"
    mosaic_generator_steps: int = 500
    mosaic_generator_lr: float = 0.001
    mosaic_adversarial_weight: float = 1.0
    mosaic_entropy_weight: float = 0.0
    mosaic_diversity_weight: float = 5.0
    mosaic_sequence_length: int = 16
    mosaic_meta_steps: int = 150
    mosaic_distill_steps: int = 200
    mosaic_distill_lr: float = 0.0001
    mosaic_samples_per_generator: int = 32
    mosaic_temperature: float = 1.0
    mosaic_student_family: str = ""
    client_label_noise: float = 0.0
    noisy_client_fraction: float = 1.0
    checkpoint_every: int = 1
    keep_checkpoints: int = 3
    resume: str = ""
    min_replies: int = 1
    update_norm_limit: float = 0.0
    update_norm_action: str = "reject"
    wire_dtype: str = "float32"
    registry_address: str = ""
    registry_root_certificates: str = ""
    device: str = "auto"
    round_timeout: float = 3600.0
    min_clients: int = 1

    @classmethod
    def keys(cls) -> list[str]:
        return [f.name.replace("_", "-") for f in fields(cls)]

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any]) -> RunConfig:
        """Build from hyphenated keys; unknown keys and wrong types raise ConfigError.

        ``server-round``, which Flower strategies add to every message config, is ignored.
        """
        types = {f.name: f.type for f in fields(cls)}
        kwargs: dict[str, Any] = {}
        for key, value in values.items():
            name = key.replace("-", "_")
            if name not in types:
                if key in _MESSAGE_ONLY_KEYS:
                    continue
                raise ConfigError(
                    f"unknown run-config key '{key}'; known keys: {', '.join(cls.keys())}"
                )
            kwargs[name] = _coerce(key, value, types[name])
        return cls(**kwargs)

    def to_mapping(self) -> dict[str, Any]:
        return {f.name.replace("_", "-"): getattr(self, f.name) for f in fields(self)}

    def replace(self, **changes: Any) -> RunConfig:
        return dataclasses.replace(self, **changes)

    def __post_init__(self) -> None:
        self.validate()

    def to_json(self) -> str:
        return json.dumps(self.to_mapping(), indent=2, sort_keys=True)

    @property
    def target_modules(self) -> list[str]:
        return [m.strip() for m in self.lora_target_modules.split(",") if m.strip()]

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
        """Range and choice checks that need no data and no model.

        The strategy name is checked by ``strategies.build_strategy``, which owns the list.
        """
        _choice("partitioner", self.partitioner, PARTITIONER_NAMES)
        _choice("device", self.device, DEVICE_NAMES)
        _choice("wire-dtype", self.wire_dtype, WIRE_DTYPES)
        if self.registry_address and not re.fullmatch(r"[^\s:]+:\d{1,5}|\[[0-9a-fA-F:]+\]:\d{1,5}",
                                                       self.registry_address):
            raise ConfigError(f"registry-address must be HOST:PORT, got '{self.registry_address}'")
        _at_least("num-server-rounds", self.num_server_rounds, 1)
        _at_least("local-epochs", self.local_epochs, 1)
        _at_least("batch-size", self.batch_size, 1)
        _at_least("max-seq-len", self.max_seq_len, 8)
        _at_least("pathological-classes", self.pathological_classes, 1)
        _at_least("lora-r", self.lora_r, 1)
        _at_least("lora-alpha", self.lora_alpha, 1)
        for key, value in (("fraction-train", self.fraction_train),
                           ("fraction-evaluate", self.fraction_evaluate)):
            if not 0.0 < value <= 1.0:
                raise ConfigError(f"{key} must be in (0, 1], got {value}")
        for key, value in (("server-test-fraction", self.server_test_fraction),
                           ("local-test-fraction", self.local_test_fraction)):
            if not 0.0 < value < 1.0:
                raise ConfigError(f"{key} must be in (0, 1), got {value}")
        for key, value in (("lr", self.lr), ("dirichlet-alpha", self.dirichlet_alpha),
                           ("round-timeout", self.round_timeout)):
            if not value > 0.0:
                raise ConfigError(f"{key} must be > 0, got {value}")
        _at_least("fedref-p", self.fedref_p, 1)
        _at_least("num-global-models", self.num_global_models, 1)
        _choice("fedmerge-w-tensors", self.fedmerge_w_tensors, ("head", "all"))
        _choice("fedmerge-w-step", self.fedmerge_w_step, ("plain", "official"))
        self._validate_server_data()
        self._validate_families()
        self._validate_mosaic()
        _at_least("atlas-size", self.atlas_size, 1)
        _at_least("max-staleness", self.max_staleness, 0)
        _choice("guided-granularity", self.guided_granularity, GUIDED_GRANULARITIES)
        _at_least("search-steps", self.search_steps, 1)
        _at_least("search-batch-size", self.search_batch_size, 1)
        _at_least("eviction-patience", self.eviction_patience, 1)
        if not self.search_lr > 0.0:
            raise ConfigError(f"search-lr must be > 0, got {self.search_lr}")
        for key, value in (("client-label-noise", self.client_label_noise),
                           ("noisy-client-fraction", self.noisy_client_fraction)):
            if not 0.0 <= value <= 1.0:
                raise ConfigError(f"{key} must be in [0, 1], got {value}")
        _at_least("checkpoint-every", self.checkpoint_every, 1)
        _at_least("keep-checkpoints", self.keep_checkpoints, 1)
        _at_least("min-replies", self.min_replies, 1)
        _at_least("min-clients", self.min_clients, 1)
        _choice("update-norm-action", self.update_norm_action, ("reject", "clip"))
        for key, value in (("fedprox-mu", self.fedprox_mu), ("fedref-mu", self.fedref_mu),
                           ("fedref-lambda", self.fedref_lambda),
                           ("fedmerge-mu", self.fedmerge_mu), ("lr-w", self.lr_w),
                           ("lr-theta", self.lr_theta),
                           ("update-norm-limit", self.update_norm_limit)):
            if value < 0.0:
                raise ConfigError(f"{key} must be >= 0, got {value}")
        if not self.target_modules:
            raise ConfigError("lora-target-modules names no module")
        if not self.output_dir:
            raise ConfigError("output-dir is empty")
        if "/" in self.run_name or self.run_name in (".", ".."):
            raise ConfigError(f"run-name must be a plain folder name, got '{self.run_name}'")
        self._validate_dataset()
        self._validate_model()

    @property
    def families(self) -> list[str]:
        """The backbones clients run: ``model-families``, or the one ``model``."""
        listed = [f.strip() for f in self.model_families.split(",") if f.strip()]
        return listed or [self.model]

    @property
    def family_map(self) -> dict[str, str]:
        """``family-assignment`` as client id -> family."""
        pairs = [p.strip() for p in self.family_assignment.split(",") if p.strip()]
        return dict(p.split(":", 1) for p in pairs)

    @property
    def hetlora_rank_of(self) -> dict[str, int]:
        ranks = [r.strip() for r in self.hetlora_ranks.split(",") if r.strip()]
        return dict(zip(self.families, (int(r) for r in ranks), strict=True))

    def _validate_families(self) -> None:
        from pollen.models import MODEL_NAMES  # models imports config: import here

        families = self.families
        if self.model_families and self.strategy not in FAMILY_STRATEGIES:
            raise ConfigError(f"model-families is for the strategies that federate several "
                              f"backbones ({', '.join(FAMILY_STRATEGIES)}); strategy "
                              f"'{self.strategy}' runs the one model '{self.model}'")
        if len(set(families)) != len(families):
            raise ConfigError(f"model-families names a family twice: {self.model_families}")
        for family in families if self.model_families else []:  # else: _validate_model
            if family not in MODEL_NAMES and not family.startswith("hf:"):
                raise ConfigError(f"unknown model family '{family}' in model-families; "
                                  f"choose from: {', '.join(MODEL_NAMES)} or hf:<id>")
        if self.model_families and "cnn" in families and len(families) > 1:
            raise ConfigError("model-families mixes the image model 'cnn' with text models")
        for pair in (p.strip() for p in self.family_assignment.split(",") if p.strip()):
            client, _, family = pair.partition(":")
            if not client or family not in families:
                raise ConfigError(f"family-assignment entry '{pair}' must be client:family "
                                  f"with a family of model-families ({', '.join(families)})")
        _at_least("dema-rank", self.dema_rank, 1)
        _at_least("dema-experts", self.dema_experts, 1)
        _at_least("dema-banks", self.dema_banks, 1)
        if not [m for m in self.dema_target_modules.split(",") if m.strip()]:
            raise ConfigError("dema-target-modules names no module")
        if self.hetlora_ranks or self.strategy == "hetlora":
            ranks = [r.strip() for r in self.hetlora_ranks.split(",") if r.strip()]
            if len(ranks) != len(families) or not all(r.isdigit() and int(r) >= 1
                                                      for r in ranks):
                raise ConfigError(f"hetlora-ranks must give one rank >= 1 per family "
                                  f"({', '.join(families)}), got '{self.hetlora_ranks}'")

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
        _choice("unlabeled-loss", self.unlabeled_loss, ("im", "entropy"))
        if not 0.0 < self.server_data_holdout < 1.0:
            raise ConfigError(f"server-data-holdout must be in (0, 1), got "
                              f"{self.server_data_holdout}")
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
        if self.strategy in SERVER_DATA_STRATEGIES and not self.has_server_data:
            raise ConfigError(f"strategy '{self.strategy}' needs server-held data: set "
                              "server-data-fraction in (0, 1) or server-data to a file")
        if self.strategy == "central" and not self.server_data_labeled:
            raise ConfigError("strategy 'central' trains on the server's labels: it needs "
                              "server-data-labeled = true")

    def _validate_mosaic(self) -> None:
        for key, value in (("mosaic-prototypes", self.mosaic_prototypes),
                           ("mosaic-generator-steps", self.mosaic_generator_steps),
                           ("mosaic-sequence-length", self.mosaic_sequence_length),
                           ("mosaic-meta-steps", self.mosaic_meta_steps),
                           ("mosaic-distill-steps", self.mosaic_distill_steps),
                           ("mosaic-samples-per-generator", self.mosaic_samples_per_generator)):
            _at_least(key, value, 1)
        _at_least("mosaic-warmup-rounds", self.mosaic_warmup_rounds, 0)
        _choice("mosaic-prototype-rounds", self.mosaic_prototype_rounds, ("latest", "all"))
        for key, value in (("mosaic-adversarial-weight", self.mosaic_adversarial_weight),
                           ("mosaic-entropy-weight", self.mosaic_entropy_weight),
                           ("mosaic-diversity-weight", self.mosaic_diversity_weight)):
            if value < 0.0:
                raise ConfigError(f"{key} must be >= 0, got {value}")
        for key, value in (("mosaic-generator-lr", self.mosaic_generator_lr),
                           ("mosaic-distill-lr", self.mosaic_distill_lr),
                           ("mosaic-temperature", self.mosaic_temperature)):
            if not value > 0.0:
                raise ConfigError(f"{key} must be > 0, got {value}")
        if self.mosaic_student_family and self.mosaic_student_family not in self.families:
            raise ConfigError(f"mosaic-student-family '{self.mosaic_student_family}' is not "
                              f"among the run's families ({', '.join(self.families)})")
        if self.strategy == "mosaic" and self.mosaic_warmup_rounds >= self.num_server_rounds:
            raise ConfigError(f"mosaic: the generator round follows {self.mosaic_warmup_rounds} "
                              f"warm-up rounds, so num-server-rounds must be > "
                              f"{self.mosaic_warmup_rounds}, got {self.num_server_rounds}")

    @property
    def student_family(self) -> str:
        """The family Mosaic distils into: ``mosaic-student-family`` or the first family."""
        return self.mosaic_student_family or self.families[0]

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

    def _validate_model(self) -> None:
        from pollen.models import MODEL_NAMES  # models imports config: import here

        if self.model.startswith("hf:"):
            if self.model == "hf:":
                raise ConfigError("model 'hf:' needs a model id, e.g. hf:bert-base-uncased")
            return
        _choice("model", self.model, MODEL_NAMES)


_MESSAGE_ONLY_KEYS = {"server-round"}


def _coerce(key: str, value: Any, annotation: str) -> Any:
    """Check one value against the field's type; ints are accepted where floats are."""
    if annotation == "bool":
        ok = isinstance(value, bool)
    elif annotation == "int":
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif annotation == "float":
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        value = float(value) if ok else value
        if ok and not math.isfinite(value):
            raise ConfigError(f"run-config key '{key}' must be a finite number, got {value}")
    else:
        ok = isinstance(value, str)
    if not ok:
        raise ConfigError(
            f"run-config key '{key}' must be of type {annotation}, "
            f"got {type(value).__name__} {value!r}"
        )
    return value


def _choice(key: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ConfigError(f"unknown {key} '{value}'; choose one of: {', '.join(allowed)}")


def _at_least(key: str, value: int, minimum: int) -> None:
    if value < minimum:
        raise ConfigError(f"{key} must be >= {minimum}, got {value}")
