"""DeMA's settings."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class DemaConfig:
    rank: int  # r: the width of the shared space the experts work in
    experts: int  # K shared r x r experts per bank
    # B expert banks shared across families by relative depth (layer l of L uses bank
    # floor(l B / L)); 0: one bank per absolute layer index (layer l uses bank l)
    banks: int
    target_modules: tuple[str, ...]  # names of the adapted linear layers, e.g. query, value
    seed: int  # every DeMA tensor is seeded by its place, so shared ones start equal
    alpha: int = 16  # output scale alpha / r, as LoRA's

    @property
    def absolute(self) -> bool:
        return self.banks == 0

    def bank_of(self, layer: int, num_layers: int) -> int:
        return layer if self.absolute else layer * self.banks // num_layers
