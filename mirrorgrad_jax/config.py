"""Typed configuration: field-type checks for the config dataclasses, and YAML numbers as people write them.

Every config dataclass (:class:`~mirrorgrad_jax.trainer.TrainConfig`, ``MGConfig``, each
model's config) calls :func:`check_field_types` first thing in ``__post_init__``, so a
value of the wrong type is refused at construction with an error naming the field, the
value and the expected type, instead of failing later deep inside a comparison or XLA.

:func:`load_yaml` / :func:`parse_scalar` read numbers the way people write them.
PyYAML implements YAML 1.1, where ``1e-4`` (no dot) and ``1E5`` are *strings*; the
reference's own configs write learning rates that way, so here every spelling that
Python's ``float()`` accepts as a plain decimal (``1e-4``, ``1E-4``, ``.5``, ``5e2``,
``+3.``) is a float.
"""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from typing import Any, Literal, Union

import numpy as np
import yaml

from mirrorgrad_jax.errors import ConfigError

__all__ = ["check_field_types", "load_yaml", "parse_scalar"]


class _NumberLoader(yaml.SafeLoader):
    """SafeLoader whose floats also cover exponents without a dot or sign (YAML 1.2 style)."""


_FLOAT = re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)?$")
# Integers keep PyYAML's own resolver (it is consulted first); this one only has to catch
# what YAML 1.1 leaves as a string. A plain integer never reaches it.
_NumberLoader.add_implicit_resolver("tag:yaml.org,2002:float", _FLOAT, list("-+0123456789."))


def load_yaml(text: str) -> Any:
    """``yaml.safe_load`` with the number rule of this module (never constructs Python objects)."""
    return yaml.load(text, Loader=_NumberLoader)  # noqa: S506 - a SafeLoader subclass


def parse_scalar(text: str) -> Any:
    """One command-line value (``--lr 1e-4``, ``--set reg_weight=1e-4``) as YAML with numbers fixed."""
    return load_yaml(text)


def _describe(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if tp is type(None):
        return "null"
    if origin is Literal:
        return " or ".join(repr(v) for v in typing.get_args(tp))
    if origin in (Union, types.UnionType):
        return " or ".join(_describe(a) for a in typing.get_args(tp))
    if origin is tuple:
        args = typing.get_args(tp)
        if len(args) == 2 and args[1] is Ellipsis:
            return f"a list of {_describe(args[0])}"
        return f"a list of {len(args)} values ({', '.join(_describe(a) for a in args)})"
    return {float: "a number", int: "an integer", bool: "true or false", str: "a string"}.get(tp, getattr(tp, "__name__", str(tp)))


class _Mismatch(Exception):
    pass


def _coerce(value: Any, tp: Any) -> Any:
    """``value`` converted to ``tp`` when that loses nothing; raises _Mismatch otherwise."""
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if tp is type(None):
        if value is None:
            return None
        raise _Mismatch
    if origin is Literal:
        if any(value == v and type(value) is type(v) for v in typing.get_args(tp)):
            return value
        raise _Mismatch
    if origin in (Union, types.UnionType):
        for arg in typing.get_args(tp):
            try:
                return _coerce(value, arg)
            except _Mismatch:
                continue
        raise _Mismatch
    if origin is tuple:
        if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple)):
            raise _Mismatch
        args = typing.get_args(tp)
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(v, args[0]) for v in value)
        if len(value) != len(args):
            raise _Mismatch
        return tuple(_coerce(v, a) for v, a in zip(value, args))
    if tp is bool:
        if isinstance(value, (bool, np.bool_)):
            return bool(value)
        raise _Mismatch
    if tp is int:
        if isinstance(value, (bool, np.bool_)):
            raise _Mismatch
        if isinstance(value, (int, np.integer)):
            return int(value)
        if isinstance(value, (float, np.floating)) and float(value).is_integer():
            return int(value)  # `epochs: 1e3` reads as a float
        raise _Mismatch
    if tp is float:
        if isinstance(value, (bool, np.bool_)):
            raise _Mismatch
        if isinstance(value, (int, float, np.integer, np.floating)):
            return float(value)
        raise _Mismatch
    if tp is str:
        if isinstance(value, str):
            return value
        raise _Mismatch
    if isinstance(tp, type):
        if isinstance(value, tp):
            return value
        raise _Mismatch
    return value


def check_field_types(config: Any) -> None:
    """Checks every field of the dataclass instance ``config`` against its annotation.

    Lossless conversions are applied in place (an int where a float is expected, an
    integral float where an int is, a list where a tuple is); anything else raises.

    Raises:
      ConfigError: naming the field, the value and the expected type.
    """
    hints = typing.get_type_hints(type(config))
    for field in dataclasses.fields(config):
        value = getattr(config, field.name)
        expected = hints.get(field.name, Any)
        try:
            converted = _coerce(value, expected)
        except _Mismatch:
            hint = ""
            if isinstance(value, str):
                try:
                    float(value)
                    hint = " (a number written as text: write it without quotes)"
                except ValueError:
                    pass
            raise ConfigError(
                f"{type(config).__name__}.{field.name} must be {_describe(expected)}, got {value!r} "
                f"({type(value).__name__}){hint}"
            ) from None
        object.__setattr__(config, field.name, converted)
