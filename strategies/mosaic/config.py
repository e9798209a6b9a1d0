"""Mosaic's keys, ``[tool.flwr.app.config.mosaic]``."""

from dataclasses import dataclass

from pollen.catalog import is_decoder
from pollen.config import (
    ConfigError,
    RunConfig,
    Section,
    at_least,
    non_negative,
    one_of,
    open_fraction,
    positive,
    setting,
)


@dataclass(frozen=True)
class MosaicConfig(Section):
    name = "mosaic"
    renamed = {f"mosaic-{key}": key for key in (
        "warmup-rounds", "prototypes", "prototype-rounds", "generator-steps", "generator-lr",
        "adversarial-weight", "entropy-weight", "diversity-weight", "sequence-length",
        "meta-steps", "distill-steps", "distill-lr", "samples-per-generator", "temperature",
        "student-family")}

    warmup_rounds: int = setting(2, at_least(0))
    prototypes: int = setting(10, at_least(1))
    prototype_rounds: str = setting("all", one_of("latest", "all"))
    generator_steps: int = setting(500, at_least(1))
    generator_lr: float = setting(0.001, positive)
    adversarial_weight: float = setting(1.0, non_negative)
    entropy_weight: float = setting(0.0, non_negative)
    diversity_weight: float = setting(5.0, non_negative)
    sequence_length: int = setting(16, at_least(1))
    meta_steps: int = setting(150, at_least(1))
    distill_steps: int = setting(1500, at_least(1))
    distill_lr: float = setting(0.0001, positive)
    samples_per_generator: int = setting(32, at_least(1))
    temperature: float = setting(1.0, positive)
    student_family: str = setting("")
    min_generator_examples: int = setting(10, at_least(1))
    do_no_harm: bool = setting(True)
    heldout_prototypes: float = setting(0.2, open_fraction)

    def student(self, run: RunConfig) -> str:
        """The family Mosaic distils into: ``student-family`` or the first family."""
        return self.student_family or run.families[0]

    def check_run(self, run: RunConfig) -> None:
        decoders = [f for f in run.families if is_decoder(f)]
        if decoders:
            raise ConfigError(f"mosaic reads each example's feature at the classifier head's "
                              f"input, which a decoder classifier ({', '.join(decoders)}) "
                              "does not have: model-families for mosaic takes encoders "
                              "(minilm, minilm-l2, minilm-l4, tiny-bert, tiny-bert-w64) or cnn")
        if self.student_family and self.student_family not in run.families:
            raise ConfigError(f"mosaic.student-family '{self.student_family}' is not among "
                              f"the run's families ({', '.join(run.families)})")
        if self.warmup_rounds >= run.num_server_rounds:
            raise ConfigError(f"mosaic: the generator round follows {self.warmup_rounds} "
                              f"warm-up rounds, so num-server-rounds must be > "
                              f"{self.warmup_rounds}, got {run.num_server_rounds}")
