"""One block of the full ranking: mask each user's train items, take the top-k, mark the hits.

Shared by the one-device evaluator and the sharded one, so both rank exactly alike:
train items get :data:`MASK_SCORE` (the reference's -1e10, so in a test evaluation the
validation items stay candidates), ties go to the lower item id (``jax.lax.top_k``).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

__all__ = ["MASK_SCORE", "masked_top_k_hits"]

MASK_SCORE: float = -1e10
"""Score given to a user's train items before the top-k (the reference's value)."""


def masked_top_k_hits(
    scores: jax.Array, train_items: jax.Array, target_items: jax.Array, k: int
) -> tuple[jax.Array, jax.Array]:
    """Masks train items, takes the top ``k`` and marks the targets among them.

    Padding entries in the index matrices must be an out-of-range item id (e.g.
    ``num_items``); they are dropped by the scatters and mask nothing.

    Args:
      scores: ``(B, I)`` scores.
      train_items: ``(B, L)`` int train-item ids per row, padded with ids >= I.
      target_items: ``(B, T)`` int target-item ids per row, padded with ids >= I.
      k: list length.

    Returns:
      ``(top_items, hits)``: ``(B, k)`` int32 item ids in descending score order
      (ties toward the lower id) and the ``(B, k)`` boolean hits.
    """
    rows = jnp.arange(scores.shape[0])[:, None]
    masked = scores.at[rows, train_items].set(jnp.asarray(MASK_SCORE, scores.dtype), mode="drop")
    _, top_items = jax.lax.top_k(masked, k)
    # A hit is a ranked item among the row's targets: (B, k, T) comparisons instead of a
    # (B, I) label matrix (a scatter and a gather over the full score shape). Padding
    # targets (ids >= I) never equal a ranked item.
    hits = jnp.any(top_items[:, :, None] == target_items[:, None, :].astype(top_items.dtype), axis=-1)
    return top_items, hits
