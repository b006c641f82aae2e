"""The loss terms several models share (the reference's BPR variants, embedding regularisers and InfoNCE)."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from mirrorgrad_jax.models.kernels import pairwise_scores, rownorm

__all__ = ["bpr_log_likelihood", "embedding_l2", "frobenius", "info_nce"]


def bpr_log_likelihood(pos: jax.Array, neg: jax.Array) -> jax.Array:
    """Mean of ``log sigmoid(pos - neg)`` (numerically safe)."""
    return jnp.mean(jax.nn.log_sigmoid(pos - neg))


def frobenius(x: jax.Array) -> jax.Array:
    """Non-squared Frobenius norm with a finite gradient at zero (MMRec's EmbLoss term)."""
    return jnp.sqrt(jnp.maximum(jnp.sum(x * x), 1e-24))


def embedding_l2(users: jax.Array, pos: jax.Array, neg: jax.Array, divisor: int | jax.Array) -> jax.Array:
    """``0.5 (||users||^2 + ||pos||^2 + ||neg||^2) / divisor`` (LATTICE's and MGCN's ``bpr_loss`` regulariser)."""
    return 0.5 * (jnp.sum(users * users) + jnp.sum(pos * pos) + jnp.sum(neg * neg)) / divisor


def info_nce(view1: jax.Array, view2: jax.Array, temperature: float) -> jax.Array:
    """In-batch InfoNCE (MMRec's ``InfoNCE`` of MGCN, SMORE and PGL): row ``b`` of ``view1`` against all rows of ``view2``.

    Both views are L2-normalised per row (eps 1e-12); with ``s = view1 @ view2.T`` the
    loss is ``mean_b [logsumexp_c(s[b, c] / tau) - s[b, b] / tau]``, i.e. ``-mean log(exp(s_bb
    / tau) / sum_c exp(s_bc / tau))``. A row repeated in the batch (the same user twice)
    counts as a negative of its copies, as in the reference.

    Args:
      view1: ``(B, d)`` anchors.
      view2: ``(B, d)`` positives, row-aligned with ``view1``.
      temperature: ``tau``.

    Returns:
      The scalar loss.
    """
    a, b = rownorm(view1), rownorm(view2)
    positive = jnp.sum(a * b, axis=-1) / temperature
    total = jax.nn.logsumexp(pairwise_scores(a, b) / temperature, axis=1)
    return jnp.mean(total - positive)
