"""The per-user and temporal splits against slow, row-by-row implementations of the reference."""

from __future__ import annotations

import numpy as np
import pytest

from mirrorgrad_jax.data import DatasetError
from mirrorgrad_jax.prepare import split_per_user, split_temporal


def slow_per_user(users, seed, odd_row_to):
    """Shuffle with the same permutation, group by user keeping that order, label in Python."""
    permutation = np.random.default_rng(seed).permutation(len(users)).tolist()
    groups: dict[int, list[int]] = {}
    for row in permutation:
        groups.setdefault(int(users[row]), []).append(row)
    order, labels = [], []
    for user in sorted(groups):
        rows = groups[user]
        n = len(rows)
        if n < 10:
            counts = (n - 2, 1, 1)
        else:
            held = int(n * 0.2)
            small, large = held // 2, held - held // 2
            counts = (n - held, large, small) if odd_row_to == "valid" else (n - held, small, large)
        order += rows
        labels += [0] * counts[0] + [1] * counts[1] + [2] * counts[2]
    return order, labels


@pytest.mark.parametrize("odd_row_to", ["valid", "test"])
@pytest.mark.parametrize("seed", [0, 999])
def test_per_user_split_matches_the_slow_reference(seed, odd_row_to):
    rng = np.random.default_rng(seed + 1)
    users = np.repeat(np.arange(30), rng.integers(3, 40, 30))
    users = users[rng.permutation(len(users))]
    order, labels = split_per_user(users, seed, odd_row_to=odd_row_to)
    expected_order, expected_labels = slow_per_user(users, seed, odd_row_to)
    assert order.tolist() == expected_order
    assert labels.tolist() == expected_labels
    assert sorted(order.tolist()) == list(range(len(users)))


def test_per_user_split_sizes_follow_the_rule():
    users = np.repeat([0, 1, 2, 3], [3, 9, 10, 15])  # vt: -, -, 2, 3
    _, labels = split_per_user(users, 5, odd_row_to="test")
    per_user = [
        np.bincount(labels[np.repeat([0, 1, 2, 3], [3, 9, 10, 15]) == u], minlength=3).tolist() for u in range(4)
    ]
    assert per_user == [[1, 1, 1], [7, 1, 1], [8, 1, 1], [12, 1, 2]]
    _, labels = split_per_user(users, 5, odd_row_to="valid")
    assert np.bincount(labels[-15:], minlength=3).tolist() == [12, 2, 1]


def test_per_user_split_needs_three_rows_per_user():
    with pytest.raises(DatasetError, match="at least 3"):
        split_per_user(np.array([0, 0, 0, 1, 1]), 0)


def test_temporal_split_matches_the_slow_reference():
    rng = np.random.default_rng(3)
    timestamps = rng.integers(0, 50, 400).astype(float)  # many ties at the cut points
    order, labels = split_temporal(timestamps)
    q70, q80 = np.quantile(timestamps, [0.7, 0.8])
    slow = [0 if t < q70 else (1 if t < q80 else 2) for t in timestamps.tolist()]
    expected_order = [r for label in (0, 1, 2) for r in range(len(slow)) if slow[r] == label]
    assert order.tolist() == expected_order
    assert labels.tolist() == sorted(slow)
    with pytest.raises(DatasetError, match="three positive"):
        split_temporal(timestamps, (0.8, 0.0, 0.2))
