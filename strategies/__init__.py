"""Pollen's methods, one folder each (``strategies/<method>/``), and the run config they
share. ``METHODS`` is the registry: method name -> ``spec.MethodSpec``. The strategies
that work with any Flower ClientApp are importable by class name and built with Flower's
keywords (README, "Use a Pollen strategy in your own Flower app")."""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any

from pollen.config import RunConfig, Section
from pollen.errors import ConfigError
from strategies import (
    central,
    fedavg,
    fedavg_per_family,
    fedmerge,
    fedprox,
    fedref,
    guided,
    heterotune,
    hetlora,
    mosaic,
)
from strategies.central.strategy import Central
from strategies.fedavg.strategy import FedAvg
from strategies.fedmerge.strategy import FedMerge
from strategies.fedprox.strategy import FedProx
from strategies.fedref.strategy import FedRef
from strategies.guided.strategy import GuidedMerge
from strategies.proximal import ProximalTerm
from strategies.spec import MethodSpec, ServerSetup
from strategies.validation import ValidatedUpdates

__all__ = ["Central", "FedAvg", "FedMerge", "FedProx", "FedRef", "GuidedMerge", "METHODS",
           "ProximalTerm"]

METHODS: dict[str, MethodSpec] = {spec.name: spec for spec in (
    fedavg.SPEC,
    fedprox.SPEC,
    fedref.SPEC,
    fedmerge.SPEC,
    guided.SPEC,
    central.SPEC,
    heterotune.SPEC,
    fedavg_per_family.SPEC,
    hetlora.SPEC,
    mosaic.SPEC,
)}
SECTIONS: dict[str, type[Section]] = {s.name: s.config for s in METHODS.values() if s.config}


def method_of(name: str) -> MethodSpec:
    if name not in METHODS:
        raise ConfigError(f"unknown strategy '{name}'; choose one of: {', '.join(METHODS)}")
    return METHODS[name]


def run_config(values: Mapping[str, Any]) -> RunConfig:
    """The validated run config of Flower's flat mapping (shared keys and
    ``<method>.<key>``), checked against what its strategy needs."""
    config = RunConfig.from_mapping(values, SECTIONS)
    method_of(config.strategy).check(config)
    return config


@functools.cache
def run_config_keys() -> frozenset[str]:
    """Every key a run config may hold: the shared ones and every method's (computed
    once: each client message is filtered by it)."""
    return frozenset(RunConfig.keys()
                     + [key for section in SECTIONS.values() for key in section.keys()])


def default_run_config() -> dict[str, Any]:
    """Every key with its default, as pyproject.toml declares them (flattened)."""
    defaults = RunConfig.declared_defaults()
    for section in SECTIONS.values():
        defaults.update(section.declared_defaults())
    return defaults


def with_method(config: RunConfig) -> RunConfig:
    """``config`` with its strategy's section: a RunConfig built directly (not through
    ``run_config``) has none, and gets the section's defaults."""
    spec = method_of(config.strategy)
    if config.method is None and spec.config is not None:
        config = config.replace(method=spec.config())
    spec.check(config)
    return config


def build_strategy(setup: ServerSetup) -> ValidatedUpdates:
    """The run's method, wrapped so that it only ever sees validated replies."""
    setup.config = with_method(setup.config)
    return ValidatedUpdates.around(method_of(setup.config.strategy).build(setup))


def build_model_for(config: RunConfig, family: str, num_classes: int):
    """A family's model as the run's strategy builds it (LoRA, or its own adapters)."""
    config = with_method(config)
    return method_of(config.strategy).build_model(config, family, num_classes)
