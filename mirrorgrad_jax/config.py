"""Typed configuration: every setting declared once, with its type, allowed values and range.

A config is a frozen dataclass made with :func:`config_class`. Each field's annotation
says everything that is allowed: its type, its choices (``Literal``) and its range
(``Annotated`` with :class:`Range`, or one of the aliases below); rules that tie several
fields together are declared as :class:`Constraint` objects in ``constraints``. One
function, :func:`check_config`, runs on construction and raises a
:class:`~mirrorgrad_jax.errors.ConfigError` naming the field, the value given and what is
allowed, instead of a failure later deep inside a comparison or XLA::

    @config_class
    class MyConfig:
        embedding_size: PositiveInt = 64
        dropout: Fraction = 0.1
        projection: Literal["rows", "all"] = "rows"

    MyConfig(dropout=1.5)
    # ConfigError: MyConfig.dropout must be a finite number in [0, 1), got 1.5

Lossless conversions are applied (an int where a float is expected, an integral float
where an int is, a list where a tuple is), so YAML and command-line values fit.

:func:`load_yaml` / :func:`parse_scalar` read numbers the way people write them.
PyYAML implements YAML 1.1, where ``1e-4`` (no dot) and ``1E5`` are *strings*; the
reference's own configs write learning rates that way, so here every spelling that
Python's ``float()`` accepts as a plain decimal (``1e-4``, ``1E-4``, ``.5``, ``5e2``,
``+3.``) is a float.
"""

from __future__ import annotations

import dataclasses
import math
import re
import types
import typing
from typing import Annotated, Any, Callable, Literal, NamedTuple, Union

import numpy as np
import yaml

from mirrorgrad_jax.errors import ConfigError

__all__ = [
    "Constraint",
    "FiniteFloat",
    "Fraction",
    "NonNegativeFloat",
    "NonNegativeInt",
    "PositiveFloat",
    "PositiveInt",
    "Range",
    "Seed",
    "UnitInterval",
    "check_config",
    "check_field_types",
    "config_class",
    "load_yaml",
    "parse_scalar",
]


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
    """One command-line value (``--lr 1e-4``, ``--set reg_weight=1e-4``) as YAML with numbers fixed.

    Raises:
      ConfigError: text that is not a YAML value (``[1`` with no closing bracket).
    """
    try:
        return load_yaml(text)
    except yaml.YAMLError as err:
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise ConfigError(f"cannot read {text!r} as a value ({problem})") from None


# ---------------------------------------------------------------------------------------
# Declaring what is allowed.
# ---------------------------------------------------------------------------------------


#: The largest float32: a ranged float beyond it would be infinite once it reaches a jitted step.
FLOAT32_MAX = 3.4028234663852886e38


@dataclasses.dataclass(frozen=True)
class Range:
    """The bounds of a numeric field: ``Annotated[float, Range(ge=0, lt=1)]``.

    Every bound is optional; a ranged value must also be finite (no NaN, no infinity).
    """

    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    lt: float | None = None

    def contains(self, value: float) -> bool:
        """Whether ``value`` is finite (a float also in float32's range: it becomes one in a
        jitted step, where 1e308 would be infinite) and inside every bound."""
        if not math.isfinite(value) or (isinstance(value, float) and abs(value) > FLOAT32_MAX):
            return False
        return (
            (self.ge is None or value >= self.ge)
            and (self.gt is None or value > self.gt)
            and (self.le is None or value <= self.le)
            and (self.lt is None or value < self.lt)
        )

    def describe(self) -> str:
        """``">= 1"``, ``"> 0"``, ``"in [0, 1)"``, ``"in [1, 2**31)"``... (a power-of-two int bound as a power)."""

        def num(value: float) -> str:
            if isinstance(value, int) and value >= 2**16 and value & (value - 1) == 0:
                return f"2**{value.bit_length() - 1}"  # the int bounds of counts and seeds
            return str(value) if isinstance(value, int) else f"{value:g}"

        low = (f"[{num(self.ge)}", self.ge) if self.ge is not None else (f"({num(self.gt)}", self.gt) if self.gt is not None else None
        high = (f"{num(self.le)}]", self.le) if self.le is not None else (f"{num(self.lt)})", self.lt) if self.lt is not None else None
        if low and high:
            return f"in {low[0]}, {high[0]}"
        if low:
            return (">= " if self.ge is not None else "> ") + num(low[1])
        if high:
            return ("<= " if self.le is not None else "< ") + num(high[1])
        return "finite"


#: Counts and sizes: at least 1 and below 2**31, so that any of them fits an array dimension
#: or a 32-bit index (a batch size of 1e30 is a mistake, not a request).
PositiveInt = Annotated[int, Range(ge=1, lt=2**31)]
NonNegativeInt = Annotated[int, Range(ge=0, lt=2**31)]
#: A random seed: what both numpy's generators and ``jax.random.key`` take (0 <= seed < 2**63).
Seed = Annotated[int, Range(ge=0, lt=2**63)]
#: Any finite number (no NaN, no infinity).
FiniteFloat = Annotated[float, Range()]
PositiveFloat = Annotated[float, Range(gt=0)]
NonNegativeFloat = Annotated[float, Range(ge=0)]
#: A share that may be 0 but not 1: dropout rates, pruned fractions.
Fraction = Annotated[float, Range(ge=0, lt=1)]
#: A weight in ``[0, 1]``.
UnitInterval = Annotated[float, Range(ge=0, le=1)]


class Constraint(NamedTuple):
    """A rule over several fields of one config, declared in its ``constraints``.

    Attributes:
      fields: the fields the rule reads (named in the error).
      holds: ``holds(config) -> bool``, called once every field has its type and range.
      requirement: what is allowed, completing "``<fields>`` ...", e.g. ``"must differ"``.
    """

    fields: tuple[str, ...]
    holds: Callable[[Any], bool]
    requirement: str


# ---------------------------------------------------------------------------------------
# Checking.
# ---------------------------------------------------------------------------------------


def _describe(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if tp is type(None):
        return "null"
    if origin is Annotated:
        base, *extras = typing.get_args(tp)
        ranges = [e for e in extras if isinstance(e, Range)]
        text = _describe(base)
        if ranges and base in (int, float):
            bounds = [r.describe() for r in ranges if r.describe() != "finite"]
            text = ("an integer" if base is int else "a finite number") + ("".join(f" {b}" for b in bounds[:1]) + "".join(f" and {b}" for b in bounds[1:]))
        return text
    if origin is Literal:
        choices = typing.get_args(tp)
        return repr(choices[0]) if len(choices) == 1 else "one of " + ", ".join(repr(v) for v in choices)
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
    """``value`` converted to ``tp`` when that loses nothing and it is allowed; raises _Mismatch otherwise."""
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if origin is Annotated:
        base, *extras = typing.get_args(tp)
        value = _coerce(value, base)
        if any(isinstance(e, Range) and not e.contains(value) for e in extras):
            raise _Mismatch
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
    """Checks every field of the dataclass instance ``config`` against its annotation, in place.

    Types, ``Literal`` choices and :class:`Range` bounds; lossless conversions are
    written back into the (possibly frozen) instance.

    Raises:
      ConfigError: ``"<Class>.<field> must be <what is allowed>, got <value> (<type>)"``.
    """
    hints = typing.get_type_hints(type(config), include_extras=True)
    for field in dataclasses.fields(config):
        value = getattr(config, field.name)
        expected = hints.get(field.name, Any)
        try:
            converted = _coerce(value, expected)
        except _Mismatch:
            hint = ""
            if isinstance(value, str):
                try:
                    if math.isfinite(float(value)):  # "nan" and "inf" are not numbers written as text
                        hint = " (a number written as text: write it without quotes)"
                except ValueError:
                    pass
            elif isinstance(value, float) and math.isfinite(value) and abs(value) > FLOAT32_MAX:
                hint = " (beyond float32's largest number, 3.4e38: it would be infinite in the jitted step)"
            raise ConfigError(
                f"{type(config).__name__}.{field.name} must be {_describe(expected)}, got {value!r} "
                f"({type(value).__name__}){hint}"
            ) from None
        object.__setattr__(config, field.name, converted)


def check_config(config: Any) -> None:
    """The one check of a config: every field (:func:`check_field_types`), then every :class:`Constraint`.

    Raises:
      ConfigError: naming the field(s), the value(s) and what is allowed.
    """
    check_field_types(config)
    for rule in getattr(type(config), "constraints", ()):
        if not rule.holds(config):
            values = ", ".join(f"{name}={getattr(config, name)!r}" for name in rule.fields)
            names = " and ".join(rule.fields)
            raise ConfigError(f"{type(config).__name__}.{names} {rule.requirement}, got {values}")


def config_class(cls: type) -> type:
    """Makes ``cls`` a frozen dataclass checked by :func:`check_config` on construction.

    ``constraints`` (a tuple of :class:`Constraint`, left unannotated) is a class attribute,
    not a field.

    A ``__post_init__`` the class defines runs after the check (for normalising a value,
    never for validating one: declare that in the annotation or in ``constraints``).
    """
    own_post_init = cls.__dict__.get("__post_init__")

    def __post_init__(self) -> None:
        check_config(self)
        if own_post_init is not None:
            own_post_init(self)

    cls.__post_init__ = __post_init__
    return dataclasses.dataclass(frozen=True)(cls)
