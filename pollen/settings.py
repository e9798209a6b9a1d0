"""How Pollen declares run-config keys: typed, checked, hyphenated fields of frozen
dataclasses. ``pollen.config.RunConfig`` holds the shared keys; each method's ``Section``
(``strategies/<method>/config.py``) its own, which Flower flattens to ``<method>.<key>``.

Every field is declared with ``setting(default, *checks)``; the checks run when the record
is built, and a failing one names the key.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from typing import Any, ClassVar

from pollen.errors import ConfigError

Check = Callable[[str, Any], None]  # (qualified key, value) -> raises ConfigError


AUTO = "auto"  # a key left to the model's recommendation (``pollen.catalog.RECOMMENDED``)


def setting(default: Any, *checks: Check, auto: bool = False) -> Any:
    """A config field: its default and the checks its value must pass; with ``auto`` the
    value may also be "auto", which the model's recommendation replaces."""
    return field(default=default, metadata={"checks": checks, "auto": auto})


def at_least(minimum: int) -> Check:
    def check(key: str, value: Any) -> None:
        if value < minimum:
            raise ConfigError(f"{key} must be >= {minimum}, got {value}")
    return check


def positive(key: str, value: float) -> None:
    if not value > 0.0:
        raise ConfigError(f"{key} must be > 0, got {value}")


def non_negative(key: str, value: float) -> None:
    if value < 0.0:
        raise ConfigError(f"{key} must be >= 0, got {value}")


def one_of(*allowed: str) -> Check:
    def check(key: str, value: str) -> None:
        if value not in allowed:
            raise ConfigError(f"unknown {key} '{value}'; choose one of: {', '.join(allowed)}")
    return check


def fraction(key: str, value: float) -> None:
    """In [0, 1]."""
    if not 0.0 <= value <= 1.0:
        raise ConfigError(f"{key} must be in [0, 1], got {value}")


def open_fraction(key: str, value: float) -> None:
    """In (0, 1)."""
    if not 0.0 < value < 1.0:
        raise ConfigError(f"{key} must be in (0, 1), got {value}")


def non_empty_list(key: str, value: str) -> None:
    if not split_list(value):
        raise ConfigError(f"{key} names no module")


def split_list(value: str) -> list[str]:
    """A comma-separated key's items, stripped, empty ones dropped."""
    return [item.strip() for item in value.split(",") if item.strip()]


def key_of(attribute: str) -> str:
    """Attribute ``a_b`` is key ``a-b``; a trailing ``_`` (``lambda_``) is dropped."""
    return attribute.rstrip("_").replace("_", "-")


class Settings:
    """What the shared record and every method's section have in common: hyphenated
    keys, type checks, and the declared checks."""

    prefix: ClassVar[str] = ""  # "<method>." for a section

    @classmethod
    def _key_fields(cls) -> list[dataclasses.Field]:
        return [f for f in fields(cls) if "checks" in f.metadata]

    @classmethod
    def keys(cls) -> list[str]:
        """The qualified keys, as Flower flattens them."""
        return [cls.prefix + key_of(f.name) for f in cls._key_fields()]

    @classmethod
    def declared_defaults(cls) -> dict[str, Any]:
        """Each key's default as declared (``auto`` unresolved): pyproject.toml's values."""
        return {cls.prefix + key_of(f.name): f.default for f in cls._key_fields()}

    @classmethod
    def _kwargs(cls, values: Mapping[str, Any]) -> dict[str, Any]:
        """Field values from keys without the prefix; unknown keys and wrong types raise."""
        by_key = {key_of(f.name): f for f in cls._key_fields()}
        kwargs = {}
        for key, value in values.items():
            if key not in by_key:
                raise ConfigError(f"unknown run-config key '{cls.prefix}{key}'; known keys: "
                                  f"{', '.join(cls.keys())}")
            annotation = by_key[key].type
            if by_key[key].metadata["auto"] and value == AUTO:
                kwargs[by_key[key].name] = value
                continue
            kwargs[by_key[key].name] = _coerce(cls.prefix + key, value, getattr(
                annotation, "__name__", annotation))
        return kwargs

    def to_mapping(self) -> dict[str, Any]:
        return {self.prefix + key_of(f.name): getattr(self, f.name) for f in self._key_fields()}

    def _check_fields(self) -> None:
        for f in self._key_fields():
            if f.metadata["auto"] and getattr(self, f.name) == AUTO:
                continue
            for check in f.metadata["checks"]:
                check(self.prefix + key_of(f.name), getattr(self, f.name))


@dataclass(frozen=True)
class Section(Settings):
    """A method's own keys, ``[tool.flwr.app.config.<name>]``.

    Subclasses are frozen dataclasses whose fields are declared with ``setting``; they
    set ``name`` (the method, also the table's name), ``renamed`` (each key's flat name
    from before sections, so an old name gets an error naming the new key), and may add
    ``check_run`` for checks against the shared keys."""

    name: ClassVar[str] = ""
    renamed: ClassVar[Mapping[str, str]] = {}

    def __init_subclass__(cls, **kwargs) -> None:
        super().__init_subclass__(**kwargs)
        cls.prefix = f"{cls.name}."

    def __post_init__(self) -> None:
        self._check_fields()

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any]) -> Section:
        """From the section's keys without the ``<name>.`` prefix."""
        return cls(**cls._kwargs(values))

    def check_run(self, run: Any) -> None:
        """Raise ConfigError if this section does not fit the run's shared keys (``run``,
        a ``pollen.config.RunConfig``)."""


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
