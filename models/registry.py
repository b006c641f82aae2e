"""The model registry: names to classes, and configs built from plain mappings (YAML, flags)."""

from __future__ import annotations

import dataclasses
from typing import Any

from mirrorgrad_jax.errors import ConfigError, UserInputError
from mirrorgrad_jax.models.interface import Recommender

__all__ = ["available_models", "build_config", "get_model", "register"]


_REGISTRY: dict[str, type[Recommender]] = {}


def register(cls: type[Recommender]) -> type[Recommender]:
    """Class decorator adding a model to the registry under ``cls.name``."""
    _REGISTRY[cls.name] = cls
    return cls


def available_models() -> list[str]:
    return sorted(_REGISTRY)


def get_model(name: str) -> type[Recommender]:
    """The registered model class called ``name`` (case-insensitive).

    Raises:
      UserInputError: an unknown name (the message lists the available ones).
    """
    key = str(name).lower()
    if key not in _REGISTRY:
        raise UserInputError(f"unknown model {name!r}; available: {', '.join(available_models())}")
    return _REGISTRY[key]


def build_config(cls: type[Recommender], values: dict[str, Any] | None) -> Any:
    """Builds ``cls.config_class`` from a mapping, naming any unknown key and the allowed ones.

    Raises:
      ConfigError: an unknown key, a value of the wrong type or out of range.
    """
    values = dict(values or {})
    fields = {f.name for f in dataclasses.fields(cls.config_class)}
    unknown = sorted(set(values) - fields)
    if unknown:
        raise ConfigError(f"unknown {cls.name} option(s) {unknown}; allowed: {sorted(fields)}")
    try:
        return cls.config_class(**values)
    except ConfigError:
        raise
    except (TypeError, ValueError) as err:
        raise ConfigError(f"{cls.name} config: {err}") from None
