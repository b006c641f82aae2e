"""The sparse-matrix type every graph builder returns, and the checks they share.

An adjacency is three flat arrays (rows, cols, values) sorted by row over ``num_nodes``
nodes, jraph-style: static shapes, no Python loops over nodes or edges. Node ids follow
the reference: users ``0..U-1``, then items ``U..U+I-1``.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import numpy as np

__all__ = ["CooAdjacency", "DEGREE_EPS", "check_pairs", "pair_counts", "sorted_coo"]

#: Degree epsilon of the reference's ``_normalize_adj_m`` (FREEDOM, LayerGCN, DualGNN, DRAGON).
DEGREE_EPS = 1e-7


class CooAdjacency(NamedTuple):
    """A sparse square matrix over ``num_nodes`` nodes, entries sorted by row."""

    rows: np.ndarray | jax.Array
    cols: np.ndarray | jax.Array
    values: np.ndarray | jax.Array
    num_nodes: int


def check_pairs(train: Any, num_users: int, num_items: int | None = None) -> np.ndarray:
    """Returns ``train`` as an ``(E, 2)`` int64 array after range checks."""
    pairs = np.asarray(train)
    if pairs.ndim != 2 or pairs.shape[1] < 2:
        raise ValueError(f"train pairs must have shape (E, 2), got {pairs.shape}")
    pairs = pairs[:, :2].astype(np.int64)
    if len(pairs):
        if pairs.min() < 0:
            raise ValueError(f"train pairs contain a negative id ({int(pairs.min())})")
        if pairs[:, 0].max() >= num_users:
            raise ValueError(f"train pairs contain user {int(pairs[:, 0].max())}, but num_users={num_users}")
        if num_items is not None and pairs[:, 1].max() >= num_items:
            raise ValueError(f"train pairs contain item {int(pairs[:, 1].max())}, but num_items={num_items}")
    return pairs


def pair_counts(train: Any, num_users: int, num_items: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Distinct (user, item) pairs and how often each occurs, as ``(users, items, counts)``."""
    pairs = check_pairs(train, num_users, num_items)
    distinct, counts = np.unique(pairs, axis=0, return_counts=True)
    return distinct[:, 0], distinct[:, 1], counts.astype(np.float64)


def sorted_coo(rows: np.ndarray, cols: np.ndarray, values: np.ndarray, num_nodes: int) -> CooAdjacency:
    order = np.lexsort((cols, rows))
    return CooAdjacency(
        rows[order].astype(np.int32), cols[order].astype(np.int32), values[order].astype(np.float32), num_nodes
    )
