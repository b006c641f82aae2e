"""torch's initialisers, so a model starts from the distribution its reference starts from."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

__all__ = ["add_feature_projection", "torch_linear_default", "xavier_normal", "xavier_uniform"]

# torch's xavier initialisers on an (n, d) table: U(+-sqrt(6/(n+d))) and N(0, 2/(n+d)),
# symmetric in n and d. jax's glorot_normal truncates, so the normal one is spelled out.
xavier_uniform = jax.nn.initializers.variance_scaling(1.0, "fan_avg", "uniform")
xavier_normal = jax.nn.initializers.variance_scaling(1.0, "fan_avg", "normal")


def torch_linear_default(key: jax.Array, fan_in: int, fan_out: int) -> tuple[jax.Array, jax.Array]:
    """torch's default ``nn.Linear`` init as ``(weight (fan_in, fan_out), bias (fan_out,))``.

    Both are ``U(-1/sqrt(fan_in), 1/sqrt(fan_in))`` (kaiming-uniform with ``a = sqrt(5)``
    for the weight). The weight is stored transposed w.r.t. torch, so ``y = x @ w + b``.
    """
    bound = 1.0 / np.sqrt(fan_in)
    # One draw for weight and bias (same distribution): one random kernel to compile.
    both = jax.random.uniform(key, (fan_in + 1, fan_out), jnp.float32, -bound, bound)
    return both[:fan_in], both[fan_in]


def add_feature_projection(module: nnx.Module, role: str, table: np.ndarray, out_dim: int, key: jax.Array) -> None:
    """Give ``module`` a trainable feature table and its linear projection, named after ``role``.

    Sets ``{role}_emb`` (``table`` as a trainable ``nnx.Param``: the reference's
    ``nn.Embedding.from_pretrained(table, freeze=False)``) and ``{role}_trs_w`` (``(F, out_dim)``)
    / ``{role}_trs_b`` (``(out_dim,)``), an ``nn.Linear(F, out_dim)`` with torch's default
    init drawn from ``key`` (:func:`torch_linear_default`). Apply it as
    ``emb @ trs_w + trs_b``.
    """
    w, b = torch_linear_default(key, table.shape[1], out_dim)
    setattr(module, f"{role}_emb", nnx.Param(jnp.asarray(table)))
    setattr(module, f"{role}_trs_w", nnx.Param(w))
    setattr(module, f"{role}_trs_b", nnx.Param(b))
