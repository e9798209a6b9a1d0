"""HetLoRA's keys, ``[tool.flwr.app.config.hetlora]``."""

from dataclasses import dataclass

from pollen.config import ConfigError, RunConfig, Section, setting, split_list


@dataclass(frozen=True)
class HetLoRAConfig(Section):
    name = "hetlora"
    renamed = {"hetlora-ranks": "ranks"}

    ranks: str = setting("")  # one LoRA rank per family of model-families, in order

    def rank_of(self, run: RunConfig) -> dict[str, int]:
        return dict(zip(run.families, (int(r) for r in split_list(self.ranks)), strict=True))

    def check_run(self, run: RunConfig) -> None:
        ranks = split_list(self.ranks)
        if len(ranks) != len(run.families) or not all(r.isdigit() and int(r) >= 1
                                                       for r in ranks):
            raise ConfigError(f"hetlora.ranks must give one rank >= 1 per family "
                              f"({', '.join(run.families)}), got '{self.ranks}'")
