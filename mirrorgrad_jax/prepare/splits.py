"""Train/valid/test splits of prepared interactions: the reference's two protocols.

Both functions return the rows in the order the ``.inter`` file lists them together
with their ``x_label`` (0 train, 1 valid, 2 test):

* :func:`split_per_user` (the default, the reference's ``1splitting`` notebook): the
  rows are shuffled with a seeded generator and grouped by user; a user with fewer than
  10 rows gives its last two rows to valid and test, others 20 % shared by valid and
  test (see :func:`mirrorgrad_jax.data.per_user_split`, which this reuses; where the odd
  held-out row goes is a choice, see the function). Rows come out grouped by user, each
  user's rows train first, then valid, then test.
* :func:`split_temporal` (the reference's earlier ``0rating2inter`` split): one global
  cut at the 70 % and 80 % quantiles of the timestamps. Rows come out train block,
  valid block, test block, each in input order.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from mirrorgrad_jax.data import DatasetError, per_user_split

__all__ = ["TEMPORAL_RATIOS", "split_per_user", "split_temporal"]

#: Train/valid/test shares of the reference's global temporal split.
TEMPORAL_RATIOS: tuple[float, float, float] = (0.7, 0.1, 0.2)


def split_per_user(users: np.ndarray, seed: int, *, odd_row_to: str = "valid") -> tuple[np.ndarray, np.ndarray]:
    """The reference's per-user random split.

    Shuffles the rows with ``numpy.random.default_rng(seed).permutation``, groups them by
    user (a stable sort, so each user keeps the shuffled order), then labels each user's
    rows: ``n < 10`` gives ``n - 2`` train, 1 valid and 1 test row; otherwise
    ``vt = floor(0.2 n)`` rows are held out and split in two halves. When ``vt`` is odd
    the extra row goes to ``odd_row_to``:

    * ``"valid"`` (default): valid ``ceil(vt / 2)``, test ``floor(vt / 2)``. This is what
      the released MMRec Amazon Baby set holds: its per-user counts follow this rule for
      all 19,445 users (118,551 / 21,682 / 20,559 rows).
    * ``"test"``: valid ``floor(vt / 2)``, test the rest, as the ``1splitting`` notebook
      in the reference repository computes (and :func:`mirrorgrad_jax.data.per_user_split`).

    Args:
        users: ``(E,)`` user index of each row.
        seed: Seed of the shuffle.
        odd_row_to: ``"valid"`` or ``"test"``, see above.

    Returns:
        ``(order, labels)``: ``order`` lists row indices in output order (grouped by
        ascending user, each user's train rows, then valid, then test) and ``labels`` the
        ``x_label`` of each listed row.

    Raises:
        DatasetError: some user has fewer than 3 rows, or a bad ``odd_row_to``.
    """
    if odd_row_to not in ("valid", "test"):
        raise DatasetError(f"odd_row_to must be 'valid' or 'test', got {odd_row_to!r}")
    users = np.asarray(users, dtype=np.int64)
    rows = np.arange(len(users), dtype=np.int64)
    try:
        parts = per_user_split(np.column_stack([users, rows]), np.random.default_rng(seed))
    except DatasetError as err:
        raise DatasetError(
            f"the per-user split gives every user a train, a valid and a test row: {err}; "
            "raise the k-core threshold to at least 3 or use the temporal split"
        ) from None
    stacked = np.concatenate(parts)
    labels = np.concatenate([np.full(len(part), label, np.int8) for label, part in enumerate(parts)])
    grouped = np.argsort(stacked[:, 0], kind="stable")
    order, labels = stacked[grouped, 1], labels[grouped]
    if odd_row_to == "valid":
        # Within each user the held-out rows are contiguous (valid, then test); give the
        # first ceil(h / 2) of them to valid instead of floor(h / 2).
        group_users = users[order]
        held = labels > 0
        starts = np.flatnonzero(np.r_[True, group_users[1:] != group_users[:-1]])
        counts = np.diff(np.r_[starts, len(order)])
        heldout = np.add.reduceat(held.astype(np.int64), starts)
        first_held = np.repeat(starts + counts - heldout, counts)
        rank = np.arange(len(order)) - first_held
        n_valid = np.repeat(heldout - heldout // 2, counts)
        labels = np.where(held, np.where(rank < n_valid, 1, 2), 0).astype(np.int8)
    return order, labels


def split_temporal(timestamps: np.ndarray, ratios: Sequence[float] = TEMPORAL_RATIOS) -> tuple[np.ndarray, np.ndarray]:
    """The reference's global temporal split at timestamp quantiles.

    With cumulative shares ``c1 = r0`` and ``c2 = r0 + r1`` (after normalising the
    ratios), cut points ``q1, q2`` are ``numpy.quantile`` (linear interpolation) of all
    timestamps; a row is train if ``t < q1``, valid if ``q1 <= t < q2``, test otherwise.
    Ties at a cut point therefore all go to the later split. Users or items that only
    occur after a cut are cold in train; the loader drops valid/test rows of users
    without train rows, as the reference does.

    Args:
        timestamps: ``(E,)`` timestamps of the rows.
        ratios: Positive train/valid/test shares, default 70/10/20.

    Returns:
        ``(order, labels)``: row indices in output order (train rows, then valid, then
        test, each in input order) and their ``x_label``.

    Raises:
        DatasetError: ratios that are not three positive numbers.
    """
    shares = [float(r) for r in ratios]
    if len(shares) != 3 or not all(np.isfinite(shares)) or min(shares) <= 0:
        raise DatasetError(f"temporal split ratios must be three positive numbers, got {list(ratios)}")
    total = sum(shares)  # summed and divided in this order, as the reference does
    cuts = np.quantile(np.asarray(timestamps, np.float64), np.cumsum([r / total for r in shares])[:2])
    labels = (timestamps >= cuts[0]).astype(np.int8) + (timestamps >= cuts[1])
    order = np.argsort(labels, kind="stable")
    return order, labels[order]
