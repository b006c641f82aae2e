"""Graphs as flat edge arrays (COO) with segment-sum propagation.

Static shapes, no Python loops over nodes or edges: an adjacency is three arrays
(rows, cols, values) sorted by row, and ``A @ X`` is a gather followed by
``jax.ops.segment_sum``.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["CooAdjacency", "normalized_bipartite_adjacency", "propagate"]


class CooAdjacency(NamedTuple):
    """A sparse square matrix over ``num_nodes`` nodes, entries sorted by row."""

    rows: np.ndarray | jax.Array
    cols: np.ndarray | jax.Array
    values: np.ndarray | jax.Array
    num_nodes: int


def normalized_bipartite_adjacency(train: np.ndarray, num_users: int, num_items: int, *, eps: float = 1e-7) -> CooAdjacency:
    """The symmetric normalised user-item adjacency ``D^-1/2 A D^-1/2`` (spec section 3.0, A_sym).

    Nodes are users ``0..U-1`` then items ``U..U+I-1``; every distinct train pair gives
    an edge in both directions with value ``1 / sqrt((d_u + eps) (d_i + eps))`` where
    ``d`` are binary degrees (duplicates merged).

    Args:
      train: ``(E, 2)`` int array of (user, item) pairs.
      num_users: U.
      num_items: I.
      eps: added to each degree before the inverse square root (1e-7 in the reference).

    Returns:
      A :class:`CooAdjacency` with ``2 * E_distinct`` entries (numpy arrays).
    """
    pairs = np.unique(np.asarray(train, dtype=np.int64), axis=0)
    users, items = pairs[:, 0], pairs[:, 1] + num_users
    num_nodes = num_users + num_items
    rows = np.concatenate([users, items])
    cols = np.concatenate([items, users])
    degree = np.bincount(rows, minlength=num_nodes).astype(np.float64) + eps
    values = 1.0 / np.sqrt(degree[rows] * degree[cols])
    order = np.lexsort((cols, rows))
    return CooAdjacency(
        rows[order].astype(np.int32), cols[order].astype(np.int32), values[order].astype(np.float32), num_nodes
    )


def propagate(adjacency: CooAdjacency, x: jax.Array) -> jax.Array:
    """``A @ x`` for a COO adjacency sorted by row: ``out[r] = sum_c A[r, c] * x[c]``."""
    messages = adjacency.values[:, None] * x[adjacency.cols]
    return jax.ops.segment_sum(messages, adjacency.rows, num_segments=adjacency.num_nodes, indices_are_sorted=True)
