"""The interface every recommender answers, and the model registry.

A model is a Flax NNX module built from a dataset and a typed config. The trainer
sees only this interface and never special-cases a model:

* ``loss(batch, key) -> scalar``: ``batch`` is an int32 ``(3, B)`` array
  ``[users; positives; negatives]`` (``(2, B)`` when ``uses_negatives`` is False);
* ``scores(users) -> (len(users), num_items)`` for full ranking;
* ``pre_epoch(rng)``: optional host-side refresh before each epoch (graph sampling);
  it may replace non-trainable variables with arrays of the SAME shapes.

Trainable parameters are ``nnx.Param``; constants (features, graphs) are
:class:`Constant` variables, which the optimizer never sees.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

__all__ = ["Constant", "TrainingCache", "Recommender", "register", "get_model", "available_models", "xavier_uniform", "xavier_normal"]

# torch's xavier initialisers on an (n, d) table: U(+-sqrt(6/(n+d))) and N(0, 2/(n+d)),
# symmetric in n and d. jax's glorot_normal truncates, so the normal one is spelled out.
xavier_uniform = jax.nn.initializers.variance_scaling(1.0, "fan_avg", "uniform")
xavier_normal = jax.nn.initializers.variance_scaling(1.0, "fan_avg", "normal")


class Constant(nnx.Variable):
    """A non-trainable array held by a model (features, graph edges, frozen tensors)."""


class TrainingCache(nnx.Variable):
    """An output of the training forward pass kept for evaluation ("stale" evaluation).

    Several reference models rank items with the representation cached by the LAST
    training forward of the epoch instead of recomputing it. A model reproduces that by
    assigning to a ``TrainingCache`` variable inside ``loss``; the trainer carries the
    value out of its jitted epoch and writes it back before evaluating.
    """


class Recommender(nnx.Module):
    """Base class of every model; see the module docstring for the contract."""

    name: ClassVar[str] = "recommender"
    config_class: ClassVar[type] = object
    uses_negatives: ClassVar[bool] = True
    multimodal: ClassVar[bool] = False

    def loss(self, batch: jax.Array, key: jax.Array) -> jax.Array:
        raise NotImplementedError

    def scores(self, users: jax.Array) -> jax.Array:
        raise NotImplementedError

    def pre_epoch(self, rng: np.random.Generator) -> None:
        """Host-side refresh before each epoch; nothing by default."""

    def num_trainable_params(self) -> int:
        return int(sum(np.prod(x.shape) for x in jax.tree.leaves(nnx.state(self, nnx.Param))))


_REGISTRY: dict[str, type[Recommender]] = {}


def register(cls: type[Recommender]) -> type[Recommender]:
    """Class decorator adding a model to the registry under ``cls.name``."""
    _REGISTRY[cls.name] = cls
    return cls


def available_models() -> list[str]:
    return sorted(_REGISTRY)


def get_model(name: str) -> type[Recommender]:
    key = name.lower()
    if key not in _REGISTRY:
        raise ValueError(f"unknown model {name!r}; available: {', '.join(available_models())}")
    return _REGISTRY[key]


def build_config(cls: type[Recommender], values: dict[str, Any] | None) -> Any:
    """Builds ``cls.config_class`` from a mapping, naming any unknown key and the allowed ones."""
    values = dict(values or {})
    fields = {f.name for f in dataclasses.fields(cls.config_class)}
    unknown = sorted(set(values) - fields)
    if unknown:
        raise ValueError(f"unknown {cls.name} option(s) {unknown}; allowed: {sorted(fields)}")
    return cls.config_class(**values)


def rownorm(x: jax.Array) -> jax.Array:
    """torch's ``F.normalize``: each row over ``max(||row||, 1e-12)``, with a finite gradient at 0."""
    return x / jnp.sqrt(jnp.maximum(jnp.sum(x * x, axis=-1, keepdims=True), 1e-24))


def torch_linear_default(key: jax.Array, fan_in: int, fan_out: int) -> tuple[jax.Array, jax.Array]:
    """torch's default ``nn.Linear`` init as ``(weight (fan_in, fan_out), bias (fan_out,))``.

    Both are ``U(-1/sqrt(fan_in), 1/sqrt(fan_in))`` (kaiming-uniform with ``a = sqrt(5)``
    for the weight). The weight is stored transposed w.r.t. torch, so ``y = x @ w + b``.
    """
    bound = 1.0 / np.sqrt(fan_in)
    # One draw for weight and bias (same distribution): one random kernel to compile.
    both = jax.random.uniform(key, (fan_in + 1, fan_out), jnp.float32, -bound, bound)
    return both[:fan_in], both[fan_in]


def branch_order(names) -> list[str]:
    """The reference's per-modality branch order: image (v), text (t), then the rest alphabetically."""
    first = [m for m in ("image", "text") if m in names]
    return first + sorted(set(names) - set(first))


def bpr_log_likelihood(pos: jax.Array, neg: jax.Array) -> jax.Array:
    """Mean of ``log sigmoid(pos - neg)`` (numerically safe)."""
    return jnp.mean(jax.nn.log_sigmoid(pos - neg))


def frobenius(x: jax.Array) -> jax.Array:
    """Non-squared Frobenius norm with a finite gradient at zero (MMRec's EmbLoss term)."""
    return jnp.sqrt(jnp.maximum(jnp.sum(x * x), 1e-24))
