"""The reference's split protocol: every user's interactions shuffled and cut into train, valid and test."""

from __future__ import annotations

import numpy as np

from mirrorgrad_jax.data.dataset import DatasetError

__all__ = ["per_user_split"]


def per_user_split(
    interactions: np.ndarray, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Splits interactions per user at random, like the reference's preprocessing.

    All rows are shuffled, then grouped by user (a stable sort, so each user's rows
    stay in random order). A user with ``n < 10`` rows gets ``n - 2`` train rows, 1
    valid and 1 test row; otherwise ``vt = floor(0.2 n)``, ``valid = floor(vt / 2)``,
    ``test = vt - valid`` and the rest is train. Every user therefore has at least
    one row in each split.

    Args:
        interactions: ``(n, 2)`` integer ``(user, item)`` rows.
        rng: Numpy generator for the shuffle.

    Returns:
        ``(train, valid, test)``, each ``(E, 2)`` int64, grouped by user in ascending
        user order.

    Raises:
        DatasetError: if ``interactions`` is not ``(n, 2)`` or some user has fewer
            than 3 rows (it could not get a row in every split).
    """
    pairs = np.asarray(interactions)
    if pairs.ndim != 2 or pairs.shape[1] != 2:
        raise DatasetError(f"interactions must have shape (n, 2), got {pairs.shape}")
    pairs = pairs[rng.permutation(len(pairs))].astype(np.int64)
    pairs = pairs[np.argsort(pairs[:, 0], kind="stable")]
    users, starts, counts = np.unique(pairs[:, 0], return_index=True, return_counts=True)
    too_small = counts < 3
    if too_small.any():
        raise DatasetError(
            f"per_user_split needs at least 3 interactions per user; {int(too_small.sum())} "
            f"users have fewer (e.g. user {int(users[np.argmax(too_small)])})"
        )
    held_out = np.where(counts < 10, 2, counts // 5)  # vt = floor(0.2 n)
    n_valid = np.where(counts < 10, 1, held_out // 2)
    n_train = counts - held_out
    rank = np.arange(len(pairs)) - np.repeat(starts, counts)  # position within the user
    label = (rank >= np.repeat(n_train, counts)).astype(np.int8)
    label += rank >= np.repeat(n_train + n_valid, counts)
    return pairs[label == 0], pairs[label == 1], pairs[label == 2]
