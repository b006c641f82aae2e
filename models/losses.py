"""The loss terms several models share (the reference's BPR variants and embedding regularisers)."""

from __future__ import annotations

import jax
import jax.numpy as jnp

__all__ = ["bpr_log_likelihood", "embedding_l2", "frobenius"]


def bpr_log_likelihood(pos: jax.Array, neg: jax.Array) -> jax.Array:
    """Mean of ``log sigmoid(pos - neg)`` (numerically safe)."""
    return jnp.mean(jax.nn.log_sigmoid(pos - neg))


def frobenius(x: jax.Array) -> jax.Array:
    """Non-squared Frobenius norm with a finite gradient at zero (MMRec's EmbLoss term)."""
    return jnp.sqrt(jnp.maximum(jnp.sum(x * x), 1e-24))


def embedding_l2(users: jax.Array, pos: jax.Array, neg: jax.Array, divisor: int | jax.Array) -> jax.Array:
    """``0.5 (||users||^2 + ||pos||^2 + ||neg||^2) / divisor`` (LATTICE's and MGCN's ``bpr_loss`` regulariser)."""
    return 0.5 * (jnp.sum(users * users) + jnp.sum(pos * pos) + jnp.sum(neg * neg)) / divisor
