"""DeMA's settings."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class DemaConfig:
    rank: int  # r: the width of the shared space the experts work in
    experts: int  # K shared r x r experts per bank
    banks: int  # B expert banks, shared across families by relative depth
    target_modules: tuple[str, ...]  # names of the adapted linear layers, e.g. query, value
    seed: int  # shared tensors start equal in every family; family tensors from (seed, family)
