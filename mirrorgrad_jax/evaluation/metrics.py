"""The reference's ranking metrics: Recall, NDCG, Precision and MAP at each cutoff, per user then averaged.

:func:`ranking_metrics` takes the ``(users, K)`` hit matrix of the top-K lists (from
:class:`~mirrorgrad_jax.evaluation.RankingEvaluator`) and applies the reference formulas
on the host in float64, each mean rounded to 4 decimals as the reference reports them.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

__all__ = ["DEFAULT_TOPK", "METRICS", "check_topk", "ranking_metrics"]

DEFAULT_TOPK: tuple[int, ...] = (5, 10, 20, 50)
METRICS: tuple[str, ...] = ("recall", "ndcg", "precision", "map")


def check_topk(topk: Sequence[int]) -> tuple[int, ...]:
    cutoffs = tuple(int(k) for k in topk)
    if not cutoffs or any(k < 1 for k in cutoffs) or len(set(cutoffs)) != len(cutoffs):
        raise ValueError(f"topk must be distinct positive integers, got {tuple(topk)}")
    return cutoffs


def ranking_metrics(
    hits: np.ndarray,
    num_positives: np.ndarray,
    topk: Sequence[int] = DEFAULT_TOPK,
    *,
    round_to: int | None = 4,
) -> dict[str, float]:
    """Recall, NDCG, precision and MAP at each cutoff, averaged over users.

    With ``h_r`` the hit at rank ``r`` (1-based) and ``n`` the user's number of
    positives: Recall@k = sum_{r<=k} h_r / n (full ``n``); Precision@k =
    sum_{r<=k} h_r / k; NDCG@k = sum_{r<=k} h_r / log2(r+1) divided by
    sum_{r<=min(k,n)} 1 / log2(r+1); MAP@k = sum_{r<=k} h_r * P@r / min(k, n) with
    P@r = sum_{j<=r} h_j / r. Computed in float64; each mean adds the users one after
    another, as the reference's ``mean(axis=0)`` does, so the 4-decimal rounding agrees.

    Args:
      hits: ``(n_users, K)`` booleans, ``hits[u, r]`` true when the item at rank
        ``r + 1`` of user ``u``'s top-K list is a positive; ``K >= max(topk)``.
      num_positives: ``(n_users,)`` number of positives per user, each >= 1.
      topk: the cutoffs.
      round_to: decimals each mean is rounded to (numpy rounding, as the reference's
        ``round`` on a numpy float); None keeps full precision.

    Returns:
      ``{'recall@5': ..., 'recall@10': ..., ..., 'map@50': ...}`` (metric-major order,
      as the reference), Python floats.

    Example::

        >>> ranking_metrics(np.array([[1, 0, 1]], bool), np.array([2]), topk=(3,))["recall@3"]
        1.0
    """
    cutoffs = check_topk(topk)
    hits = np.asarray(hits)
    num_positives = np.asarray(num_positives)
    if hits.ndim != 2:
        raise ValueError(f"hits must be (n_users, K), got shape {hits.shape}")
    n_users, k_max = hits.shape
    if n_users == 0:
        raise ValueError("hits has no users: the metrics would be a mean over nothing")
    if num_positives.shape != (n_users,):
        raise ValueError(f"num_positives has shape {num_positives.shape}, expected ({n_users},)")
    if np.any(num_positives < 1):
        raise ValueError("every user needs num_positives >= 1")
    if max(cutoffs) > k_max:
        raise ValueError(f"hits has {k_max} ranks, fewer than the largest cutoff in topk={cutoffs}")

    h = hits.astype(np.float64)
    n = num_positives.astype(np.float64)[:, None]
    ranks = np.arange(1, k_max + 1, dtype=np.float64)
    discount = 1.0 / np.log2(ranks + 1.0)
    hit_count = np.cumsum(h, axis=1)  # hits within the top r, for every r
    dcg = np.cumsum(h * discount, axis=1)
    ideal_dcg = np.cumsum(discount)  # IDCG for min(k, n) = 1..K
    avg_prec_sum = np.cumsum(h * hit_count / ranks, axis=1)

    per_user: dict[str, np.ndarray] = {}
    for k in cutoffs:
        c = hit_count[:, k - 1]
        depth = np.minimum(k, num_positives)  # min(k, n), integer
        per_user[f"recall@{k}"] = c / n[:, 0]
        per_user[f"ndcg@{k}"] = dcg[:, k - 1] / ideal_dcg[depth - 1]
        per_user[f"precision@{k}"] = c / k
        per_user[f"map@{k}"] = avg_prec_sum[:, k - 1] / depth

    # The means over users as the reference takes them: ``mean(axis=0)`` of a (users, columns)
    # matrix adds the users one after another, where ``np.mean`` of one column would add
    # them pairwise; the two differ in the last bits, which can flip a 4-decimal rounding.
    keys = [f"{metric}@{k}" for metric in METRICS for k in cutoffs]
    means = np.stack([per_user[key] for key in keys], axis=1).mean(axis=0)
    return {key: float(mean if round_to is None else np.round(mean, round_to)) for key, mean in zip(keys, means)}
