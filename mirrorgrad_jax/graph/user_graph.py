"""The user-user co-occurrence graph of DualGNN and DRAGON, and its per-epoch neighbour sample.

:func:`build_user_graph` counts, for every user, the users who share train items with it
(the reference's ``user_graph_dict.npy``), :func:`pack_user_graph` turns it into padded
arrays, and :func:`sample_user_neighbours` draws each epoch's neighbour lists as the
reference's ``topk_sample`` does, vectorised over users.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal, NamedTuple

import numpy as np

from mirrorgrad_jax.graph.coo import check_pairs
from mirrorgrad_jax.graph.torch_topk import torch_cpu_topk_order_sparse

#: How :func:`build_user_graph` orders users tied on their co-occurrence count.
UserGraphTies = Literal["lowest_id", "torch_cpu"]

__all__ = ["UserGraphTies", "UserNeighbourLists", "build_user_graph", "pack_user_graph", "sample_user_neighbours"]


class UserNeighbourLists(NamedTuple):
    """A user graph truncated to ``width`` neighbours per user, as padded arrays.

    Attributes:
      idx: ``(U, width)`` int32 neighbour ids, in the stored order (0 past ``lengths``).
      counts: ``(U, width)`` float32 co-occurrence counts (0 past ``lengths``).
      lengths: ``(U,)`` int32 number of valid neighbours, ``min(n_u, width)``.
    """

    idx: np.ndarray
    counts: np.ndarray
    lengths: np.ndarray


def _top_co_occurring_users(
    pairs: np.ndarray, num_users: int, max_neighbours: int, budget: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(a, b, c)`` sorted by (a, -c, b): user ``a``'s top neighbours ``b != a`` with ``c > 0``.

    ``pairs`` are distinct (user, item) rows sorted by user. Users are processed in contiguous
    blocks of about ``budget`` co-occurrence slots (one user with more slots forms a block
    alone): for every (a, i) of a block all users ``b`` of item ``i`` are enumerated with
    ``np.repeat`` arithmetic over an item -> users index, the keys ``a * U + b`` are sorted and
    run-length counted, and a second sort on one composite key orders each row by count.
    """
    users, items = pairs[:, 0], pairs[:, 1]
    num_items = int(items.max()) + 1
    users_by_item = users[np.argsort(items, kind="stable")]
    item_degree = np.bincount(items, minlength=num_items)
    item_start = np.cumsum(item_degree) - item_degree
    user_ptr = np.searchsorted(users, np.arange(num_users + 1))
    slots_per_user = np.bincount(users, weights=item_degree[items], minlength=num_users).astype(np.int64)
    bounds = np.flatnonzero(np.diff(np.cumsum(slots_per_user) // max(int(budget), 1))) + 1
    out_a, out_b, out_c = [], [], []
    for u0, u1 in zip(np.concatenate([[0], bounds]), np.concatenate([bounds, [num_users]])):
        p0, p1 = user_ptr[u0], user_ptr[u1]
        if p0 == p1:
            continue
        block_items = items[p0:p1]
        sizes = item_degree[block_items]
        first_slot = np.cumsum(sizes) - sizes
        neighbour = users_by_item[np.arange(int(sizes.sum())) + np.repeat(item_start[block_items] - first_slot, sizes)]
        key = np.repeat(users[p0:p1], sizes) * num_users + neighbour
        key.sort()
        new_run = np.empty(len(key), bool)
        new_run[0] = True
        np.not_equal(key[1:], key[:-1], out=new_run[1:])
        starts = np.flatnonzero(new_run)
        c = np.diff(np.append(starts, len(key)))
        key = key[starts]
        a, b = np.divmod(key, num_users)
        not_self = a != b
        a, b, c = a[not_self] - u0, b[not_self], c[not_self]
        if not len(a):
            continue
        # One int64 key orders by (row, count descending, neighbour id ascending); sorting it
        # is much faster than a lexsort of three columns.
        span = int(c.max()) + 1
        key = np.sort((a * span + (span - 1 - c)) * num_users + b)
        key, b = np.divmod(key, num_users)
        a, c = np.divmod(key, span)
        c = span - 1 - c
        per_row = np.bincount(a, minlength=int(u1 - u0))
        keep = np.arange(len(a)) - np.repeat(np.cumsum(per_row) - per_row, per_row) < max_neighbours
        out_a.append(a[keep] + u0)
        out_b.append(b[keep])
        out_c.append(c[keep])
    return _joined(out_a, out_b, out_c)


def _joined(out_a: list, out_b: list, out_c: list) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The per-block ``(rows, neighbours, counts)`` pieces concatenated (int64 empties when there are none)."""
    if not out_a:
        empty = np.zeros(0, np.int64)
        return empty, empty, empty
    return np.concatenate(out_a), np.concatenate(out_b), np.concatenate(out_c)


def build_user_graph(
    train: np.ndarray,
    num_users: int,
    max_neighbours: int = 200,
    *,
    pair_budget: int = 1 << 20,
    ties: UserGraphTies = "lowest_id",
) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """Builds MMRec's ``user_graph_dict`` from train pairs, for datasets without the file.

    The count between users ``a != b`` is the number of distinct items both interacted with
    (``|items(a) & items(b)|``, DualGNN's preprocessing script). Each user keeps the users
    with a positive count, sorted by decreasing count, at most ``max_neighbours`` of them.
    Users tied on their count are ordered by ``ties``:

    * ``"lowest_id"`` (default): by increasing user id;
    * ``"torch_cpu"``: as MMRec's ``dualgnn-gen-u-u-matrix.py`` leaves them, which calls
      ``torch.topk(row, min(n_u, max_neighbours))`` on the CPU over each user's dense count
      row (:func:`~mirrorgrad_jax.graph.torch_cpu_topk_order`); which tied users are kept at
      the ``max_neighbours``-th place, and the order of every tie, are torch's. DualGNN and
      DRAGON read the first 40 of each list, so the order matters. Pure Python per user:
      seconds on Amazon Baby, longer on catalogues with dense co-occurrence.

    Vectorised over blocks of users (co-occurrences enumerated with ``np.repeat`` arithmetic,
    counted by sorting); only building the output dict touches users one by one. About 1 s
    for Amazon Baby (118k train rows, 19k users, 7.3M co-occurrence slots) on one CPU core;
    the cost grows with ``sum_i deg(i)^2``, not with ``U^2``.

    Args:
      train: ``(E, 2)`` int (user, item) pairs; duplicates are merged.
      num_users: U; every user ``0..U-1`` gets an entry (empty arrays without neighbours).
      max_neighbours: neighbours kept per user (200 in the reference).
      ties: the order of users tied on their count, ``"lowest_id"`` or ``"torch_cpu"`` (above).
      pair_budget: approximate number of co-occurrence slots enumerated at once; bounds the
        memory at a few times ``8 * pair_budget`` bytes (only a user with more slots alone
        exceeds it).

    Returns:
      ``{user: (neighbour_ids int64 (n,), counts float32 (n,))}``, the format of
      ``user_graph_dict.npy`` accepted by :func:`sample_user_neighbours`.
    """
    if max_neighbours < 0:
        raise ValueError(f"max_neighbours must be non-negative, got {max_neighbours}")
    if ties not in ("lowest_id", "torch_cpu"):
        raise ValueError(f"ties must be 'lowest_id' or 'torch_cpu', got {ties!r}")
    pairs = np.unique(check_pairs(train, num_users), axis=0)
    if len(pairs):
        keep = num_users if ties == "torch_cpu" else max_neighbours
        a, b, c = _top_co_occurring_users(pairs, num_users, keep, pair_budget)
    else:
        a = b = c = np.zeros(0, np.int64)
    if ties == "torch_cpu":
        a, b, c = _torch_ordered(a, b, c, num_users, max_neighbours)
    bounds = np.searchsorted(a, np.arange(1, num_users))
    return dict(enumerate(zip(np.split(b, bounds), np.split(c.astype(np.float32), bounds))))


def _torch_ordered(a: np.ndarray, b: np.ndarray, c: np.ndarray, num_users: int, max_neighbours: int):
    """Every user's full neighbour list ``(a, b, c)`` cut and ordered as ``torch.topk`` on its dense count row."""
    out_a, out_b, out_c = [], [], []
    bounds = np.searchsorted(a, np.arange(num_users + 1))
    for user in range(num_users):
        lo, hi = bounds[user], bounds[user + 1]
        if lo == hi:
            continue
        by_id = np.argsort(b[lo:hi], kind="stable")
        cols, counts = b[lo:hi][by_id], c[lo:hi][by_id]
        order = torch_cpu_topk_order_sparse(cols, counts, num_users, min(hi - lo, max_neighbours))
        position = np.searchsorted(cols, order)
        out_a.append(np.full(len(order), user, np.int64))
        out_b.append(cols[position])
        out_c.append(counts[position])
    return _joined(out_a, out_b, out_c)


def pack_user_graph(
    user_graph: Mapping[int, tuple[Any, Any]], num_users: int, width: int
) -> UserNeighbourLists:
    """Converts a ``{user: (neighbour_ids, counts)}`` dict to padded arrays (host, once).

    Users missing from the mapping have no neighbours. Only the first ``width`` neighbours of
    each user are kept, which is all :func:`sample_user_neighbours` with ``k = width`` reads.

    Args:
      user_graph: the ``user_graph_dict`` mapping (lists or arrays).
      num_users: U.
      width: neighbours kept per user.

    Returns:
      A :class:`UserNeighbourLists`.
    """
    idx = np.zeros((num_users, width), np.int32)
    counts = np.zeros((num_users, width), np.float32)
    lengths = np.zeros(num_users, np.int32)
    for user, (neighbours, weights) in user_graph.items():
        user = int(user)
        if not 0 <= user < num_users:
            raise ValueError(f"user graph has user {user}, outside 0..{num_users - 1}")
        neighbours = np.asarray(neighbours, np.int64).reshape(-1)[:width]
        weights = np.asarray(weights, np.float32).reshape(-1)[:width]
        if len(neighbours) != len(weights):
            raise ValueError(f"user graph: user {user} has {len(neighbours)} neighbours but {len(weights)} weights")
        if len(neighbours) and (neighbours.min() < 0 or neighbours.max() >= num_users):
            raise ValueError(f"user graph: user {user} has a neighbour outside 0..{num_users - 1}")
        n = len(neighbours)
        idx[user, :n], counts[user, :n], lengths[user] = neighbours, weights, n
    return UserNeighbourLists(idx, counts, lengths)


def sample_user_neighbours(
    user_graph: Mapping[int, tuple[Any, Any]] | UserNeighbourLists,
    num_users: int,
    k: int = 40,
    *,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray]:
    """DualGNN / DRAGON per-epoch ``topk_sample`` (the reference's DualGNN and DRAGON), vectorised over users.

    For a user with ``n`` stored neighbours:

    * ``n >= k``: the first ``k``;
    * ``0 < n < k``: the list is padded to ``k`` by repeatedly appending a uniformly random
      element of the *current, growing* list (slot ``p >= n`` copies slot ``j ~ U{0..p-1}``,
      which may itself be a copy), together with its count;
    * ``n = 0``: ids 0 with weights 0.

    Weights are the softmax over the ``k`` (padded) raw counts. The padding is resolved slot
    by slot (a loop over the ``k`` slots, vectorised across users); the draws come from
    ``rng`` rather than the global numpy state, so the stream differs from the reference
    while the distribution is the same.

    Args:
      user_graph: the ``{user: (neighbour_ids, counts)}`` dict, or its
        :func:`pack_user_graph` form (pack once with ``width >= k`` to skip the per-call
        conversion).
      num_users: U.
      k: neighbours per user (40 in the reference).
      rng: the numpy generator that draws the padding.

    Returns:
      ``(idx, weights)``: ``(U, k)`` int32 and ``(U, k)`` float32; ``h_u = sum_j
      weights[u, j] * rep[idx[u, j]]``.
    """
    if k < 1:
        raise ValueError(f"k must be positive, got {k}")
    if isinstance(user_graph, UserNeighbourLists):
        packed = user_graph
        if packed.idx.shape[0] != num_users or packed.idx.shape[1] < k:
            raise ValueError(
                f"packed user graph has shape {packed.idx.shape}, expected ({num_users}, >= {k})"
            )
    else:
        packed = pack_user_graph(user_graph, num_users, k)
    lengths = np.minimum(packed.lengths, k).astype(np.int64)
    slots = np.arange(k)
    # The draw for slot p is uniform over the p slots already filled (unused when p < n).
    draws = rng.integers(0, np.maximum(slots, 1), size=(num_users, k))
    origin = np.zeros((num_users, k), np.int64)
    users = np.arange(num_users)
    for p in range(k):
        origin[:, p] = np.where(p < lengths, p, origin[users, draws[:, p]])
    idx = np.take_along_axis(packed.idx[:, :k], origin, axis=1)
    counts = np.take_along_axis(packed.counts[:, :k], origin, axis=1).astype(np.float64)
    weights = np.exp(counts - counts.max(axis=1, keepdims=True))
    weights /= weights.sum(axis=1, keepdims=True)
    empty = lengths == 0
    idx[empty] = 0
    weights[empty] = 0.0
    return idx.astype(np.int32), weights.astype(np.float32)
