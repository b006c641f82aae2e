"""Negative sampling and epoch batches, with the reference's semantics, in vectorised numpy.

Reference semantics (MMRec ``TrainDataLoader``):

* each epoch the train rows are shuffled with a fresh permutation and cut into
  consecutive batches of ``batch_size``; the last, smaller batch is kept;
* one negative per positive row, drawn uniformly from the DISTINCT items of the train
  split, re-drawn while it is one of the user's train items. Valid/test items of the
  user can be drawn; items that never occur in train are never drawn.

Sampling runs on the host: all negatives are drawn at once, checked against the
per-user sorted train items (CSR + ``searchsorted``) and only the rejected entries are
drawn again, until none is left. The result is shipped to the device as int32.

Example::

    rng = np.random.default_rng(999)
    epoch = epoch_batches(dataset, 2048, rng)
    for batch in epoch.batches():   # (3, B) int32: users, positives, negatives
        ...
"""

from __future__ import annotations

from typing import Iterator, NamedTuple

import numpy as np

from mirrorgrad_jax.data.dataset import RecDataset

__all__ = ["EpochBatches", "epoch_batches", "sample_negatives"]

# After this many rejection rounds the few entries still pending (users whose train
# items cover nearly the whole pool) are drawn exactly from their allowed items. The
# distribution is the same: rejection sampling is uniform over the allowed items.
_MAX_REJECTION_ROUNDS = 32


def _in_train(
    users: np.ndarray, items: np.ndarray, keys: np.ndarray, width: int
) -> np.ndarray:
    """Whether each (user, item) pair is a train pair; ``keys`` are sorted user*width+item."""
    query = users.astype(np.int64) * width + items
    pos = np.searchsorted(keys, query)
    pos = np.minimum(pos, len(keys) - 1)
    return keys[pos] == query


def sample_negatives(
    users: np.ndarray,
    train_csr: tuple[np.ndarray, np.ndarray],
    item_pool: np.ndarray,
    rng: np.random.Generator,
) -> np.ndarray:
    """Draws one negative item per entry of ``users``.

    Each negative is uniform over ``item_pool`` minus that user's train items: all
    entries are drawn at once, tested against the CSR with ``searchsorted``, and only
    the rejected ones are redrawn. Indexing the CSR costs O(E) per call, so draw a
    whole epoch in one call (as :func:`epoch_batches` does) rather than per batch.

    Args:
        users: ``(n,)`` user ids.
        train_csr: ``(indptr, indices)`` of the train split, indices sorted within each
            user (:meth:`RecDataset.train_csr`).
        item_pool: Sorted distinct candidate items, normally the distinct train items
            (:meth:`RecDataset.train_item_pool`).
        rng: Numpy generator; the only source of randomness.

    Returns:
        ``(n,)`` int32 negative item ids.

    Raises:
        ValueError: if the pool is empty, or some user's train items cover the
            whole pool (no negative exists for that user).

    Example::

        negs = sample_negatives(batch_users, ds.train_csr(), ds.train_item_pool(), rng)
    """
    users = np.asarray(users).reshape(-1)
    pool = np.asarray(item_pool).reshape(-1)
    indptr, indices = (np.asarray(a) for a in train_csr)
    if len(pool) == 0:
        raise ValueError("the item pool is empty; there is nothing to sample negatives from")
    if len(users) == 0:
        return np.zeros(0, dtype=np.int32)
    num_users = len(indptr) - 1
    if users.min() < 0 or users.max() >= num_users:
        raise ValueError(
            f"user ids must be in 0..{num_users - 1}, got {users.min()}..{users.max()}"
        )

    width = int(max(pool.max(), indices.max(initial=-1))) + 1
    owners = np.repeat(np.arange(len(indptr) - 1, dtype=np.int64), np.diff(indptr))
    keys = owners * width + indices  # sorted: CSR rows are in user order, items sorted
    negatives = pool[rng.integers(0, len(pool), size=len(users))]
    if len(keys) == 0:  # no train rows at all: nothing to reject
        return negatives.astype(np.int32)
    pending = np.flatnonzero(_in_train(users, negatives, keys, width))

    rounds = 0
    while len(pending):
        if rounds == 0:
            _check_not_saturated(users[pending], indptr, indices, pool)
        if rounds == _MAX_REJECTION_ROUNDS:
            _draw_exactly(pending, users, negatives, indptr, indices, pool, rng)
            break
        redraw = pool[rng.integers(0, len(pool), size=len(pending))]
        negatives[pending] = redraw
        pending = pending[_in_train(users[pending], redraw, keys, width)]
        rounds += 1
    return negatives.astype(np.int32)


def _check_not_saturated(
    users: np.ndarray, indptr: np.ndarray, indices: np.ndarray, pool: np.ndarray
) -> None:
    """Raises if one of ``users`` has every pool item among its train items."""
    candidates = np.unique(users)
    candidates = candidates[indptr[candidates + 1] - indptr[candidates] >= len(pool)]
    for user in candidates:
        own = indices[indptr[user] : indptr[user + 1]]
        if np.isin(pool, own).all():
            raise ValueError(
                f"user {int(user)} has all {len(pool)} items of the sampling pool among its "
                "train items, so no negative item exists for it"
            )


def _draw_exactly(
    pending: np.ndarray,
    users: np.ndarray,
    negatives: np.ndarray,
    indptr: np.ndarray,
    indices: np.ndarray,
    pool: np.ndarray,
    rng: np.random.Generator,
) -> None:
    """Draws the still-pending entries uniformly from each user's allowed items, in place."""
    for user in np.unique(users[pending]):
        rows = pending[users[pending] == user]
        allowed = np.setdiff1d(pool, indices[indptr[user] : indptr[user + 1]])
        negatives[rows] = allowed[rng.integers(0, len(allowed), size=len(rows))]


class EpochBatches(NamedTuple):
    """One epoch of training batches.

    Attributes:
        full: ``(num_full, R, batch_size)`` int32, the full batches in order; rows are
            ``[users; positives; negatives]`` (``R = 3``) or ``[users; positives]``
            (``R = 2``).
        last: ``(R, b)`` int32 with ``0 < b < batch_size``, the last smaller batch
            (kept, like the reference), or ``None`` when ``batch_size`` divides the
            number of train rows.
    """

    full: np.ndarray
    last: np.ndarray | None

    @property
    def num_batches(self) -> int:
        """Number of batches, the last partial one included."""
        return len(self.full) + (self.last is not None)

    def batches(self) -> Iterator[np.ndarray]:
        """Yields the ``(R, B)`` batches in order, the partial last batch last."""
        yield from self.full
        if self.last is not None:
            yield self.last


def epoch_batches(
    dataset: RecDataset,
    batch_size: int,
    rng: np.random.Generator,
    *,
    negatives: bool = True,
) -> EpochBatches:
    """Shuffles the train rows, draws negatives and cuts the epoch into batches.

    The rng is used for the permutation first and then for the negatives, so one
    seed gives one epoch.

    Args:
        dataset: The dataset; its train split is shuffled.
        batch_size: Rows per batch (2048 in the reference).
        rng: Numpy generator.
        negatives: Add a row of negatives (``use_neg_sampling``); ``False`` gives
            ``[users; positives]`` batches (BM3, SELFCFED_LGN).

    Returns:
        An :class:`EpochBatches`; every train row occurs exactly once in it.
    """
    if batch_size <= 0:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    rows = dataset.train[rng.permutation(len(dataset.train))]
    columns = [rows[:, 0], rows[:, 1]]
    if negatives:
        columns.append(
            sample_negatives(rows[:, 0], dataset.train_csr(), dataset.train_item_pool(), rng)
        )
    stacked = np.stack(columns).astype(np.int32, copy=False)  # (R, E)
    num_full = stacked.shape[1] // batch_size
    cut = num_full * batch_size
    full = np.ascontiguousarray(
        stacked[:, :cut].reshape(len(columns), num_full, batch_size).transpose(1, 0, 2)
    )
    last = np.ascontiguousarray(stacked[:, cut:]) if cut < stacked.shape[1] else None
    return EpochBatches(full=full, last=last)
