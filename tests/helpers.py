"""Small builders shared by the model tests."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np


def random_batch(ds, n: int = 16, seed: int = 0) -> jnp.ndarray:
    """An int32 (3, n) batch [users; positives; random items] of distinct train rows."""
    rng = np.random.default_rng(seed)
    rows = ds.train[rng.choice(len(ds.train), n, replace=False)]
    return jnp.asarray(np.stack([rows[:, 0], rows[:, 1], rng.integers(0, ds.num_items, n)]), jnp.int32)
