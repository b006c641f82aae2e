"""Full-ranking top-K evaluation and early stopping, as in the MMRec reference protocol.

Every evaluated user is scored against ALL items; only the user's TRAIN items are
masked (to -1e10), so in a test evaluation the validation items stay candidates and
count as misses when ranked. One ``lax.top_k`` with ``K_max = max(topk)`` runs on the
device; every cutoff reads a prefix of that list. Only the small ``(users, K_max)``
hit matrix comes back to the host, where :func:`ranking_metrics` applies the reference
formulas (per user, then an unweighted mean over users, each value rounded to 4
decimals). Ties in the scores go to the lower item index (``jax.lax.top_k`` order; the
reference's ``torch.topk`` order is unspecified).

Model selection follows the reference: after every epoch, the rounded valid
``recall@5`` must beat the best so far strictly, and training stops on the 21st
consecutive non-improving epoch (patience 20); see :class:`EarlyStopping`.

Example::

    evaluator = RankingEvaluator(num_items, train_pairs, valid_pairs)
    scores_fn = lambda params, users: params["user"][users] @ params["item"].T
    metrics = evaluator.evaluate(scores_fn, params)   # {'recall@5': 0.0123, ...}
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

__all__ = [
    "DEFAULT_TOPK",
    "METRICS",
    "MASK_SCORE",
    "EarlyStopping",
    "RankingEvaluator",
    "masked_top_k_hits",
    "ranking_metrics",
]

DEFAULT_TOPK: tuple[int, ...] = (5, 10, 20, 50)
METRICS: tuple[str, ...] = ("recall", "ndcg", "precision", "map")
MASK_SCORE: float = -1e10
"""Score given to a user's train items before the top-k (the reference's value)."""

ScoresFn = Callable[[Any, jax.Array], jax.Array]


def _check_topk(topk: Sequence[int]) -> tuple[int, ...]:
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
    P@r = sum_{j<=r} h_j / r. Computed in float64.

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
    cutoffs = _check_topk(topk)
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

    result = {}
    for metric in METRICS:
        for k in cutoffs:
            key = f"{metric}@{k}"
            mean = np.mean(per_user[key])
            result[key] = float(mean if round_to is None else np.round(mean, round_to))
    return result


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


def _check_pairs(name: str, pairs: np.ndarray, num_items: int) -> np.ndarray:
    pairs = np.asarray(pairs)
    if pairs.size == 0:
        return np.zeros((0, 2), np.int64)
    if pairs.ndim != 2 or pairs.shape[1] != 2:
        raise ValueError(f"{name} must be an (E, 2) array of (user, item) pairs, got shape {pairs.shape}")
    if not np.issubdtype(pairs.dtype, np.integer):
        raise ValueError(f"{name} must hold integer ids, got dtype {pairs.dtype}")
    pairs = pairs.astype(np.int64)
    if pairs[:, 0].min() < 0:
        raise ValueError(f"{name} has a negative user id ({pairs[:, 0].min()})")
    lo, hi = pairs[:, 1].min(), pairs[:, 1].max()
    if lo < 0 or hi >= num_items:
        raise ValueError(f"{name} has item ids in [{lo}, {hi}], expected [0, {num_items - 1}] for {num_items} items")
    return pairs


def _padded_rows(rows: np.ndarray, items: np.ndarray, n_rows: int, pad: int) -> np.ndarray:
    """Groups ``items`` by ``rows`` into an ``(n_rows, max_len)`` matrix padded with ``pad``."""
    order = np.argsort(rows, kind="stable")
    rows, items = rows[order], items[order]
    counts = np.bincount(rows, minlength=n_rows)
    width = max(1, int(counts.max(initial=0)))
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    out = np.full((n_rows, width), pad, np.int32)
    out[rows, np.arange(rows.size) - starts[rows]] = items
    return out


class RankingEvaluator:
    """Full-ranking evaluation of one split (valid or test) on the device.

    The host-side work (which users, which items to mask, which to count as hits) is
    done once here; :meth:`evaluate` then runs one jit-compiled program that loops over
    the blocks of ``user_block`` users (what ``scores_fn`` computes from the model state
    alone is hoisted out of the loop by XLA). The compiled program takes the model state
    as an argument, so evaluating after every epoch with new parameters does not
    recompile; it is cached per ``scores_fn``.

    Args:
      num_items: the number of items ``I``; every item id in ``0..I-1`` is a candidate.
      train: ``(E, 2)`` int ``(user, item)`` train pairs; their scores are masked.
      targets: ``(E_t, 2)`` int ``(user, item)`` pairs of the evaluated split. The
        evaluated users are its distinct users in order of first appearance; a user's
        number of positives is its number of rows (as the reference's ``pos_len``).
      topk: the cutoffs; ``max(topk)`` items are ranked per user.
      user_block: the most users per device block (the reference's ``eval_batch_size``);
        without a mesh the blocks are evened out (:attr:`user_block` may come out smaller).
      mesh: optional ``(data, model)`` device mesh: each block's users are split over
        ``data`` (the block is rounded up to a multiple of its size) and the items over
        ``model``, with the top-k merged across item shards
        (:func:`mirrorgrad_jax.sharding.sharded_ranking_fn`); the same lists as one device.

    Raises:
      ValueError: on empty targets, ``num_items < max(topk)`` or malformed pairs.
    """

    def __init__(
        self,
        num_items: int,
        train: np.ndarray,
        targets: np.ndarray,
        *,
        topk: Sequence[int] = DEFAULT_TOPK,
        user_block: int = 4096,
        mesh: Any = None,
    ):
        self.topk = _check_topk(topk)
        self.k_max = max(self.topk)
        self.num_items = int(num_items)
        if self.num_items < self.k_max:
            raise ValueError(
                f"num_items={self.num_items} is smaller than the largest cutoff {self.k_max} in topk={self.topk}; "
                "use smaller cutoffs"
            )
        if user_block < 1:
            raise ValueError(f"user_block must be >= 1, got {user_block}")
        train = _check_pairs("train", train, self.num_items)
        targets = _check_pairs("targets", targets, self.num_items)
        if targets.shape[0] == 0:
            raise ValueError("targets is empty: there are no users to evaluate")

        first_seen_users, first_index = np.unique(targets[:, 0], return_index=True)
        users = first_seen_users[np.argsort(first_index)]
        n_users = users.size
        # user id -> row among the evaluated users, -1 for users not evaluated
        row_of = np.full(max(users.max(), train[:, 0].max(initial=0)) + 1, -1, np.int64)
        row_of[users] = np.arange(n_users)

        self.user_block = min(int(user_block), n_users)
        self._mesh = mesh
        if mesh is not None:
            self.user_block = -(-self.user_block // mesh.shape["data"]) * mesh.shape["data"]
        else:
            # As many blocks as user_block requires, of equal size (a multiple of 8, at most
            # user_block), so the last block is not mostly padding: 19,445 users run as 5 x
            # 3,896 instead of 5 x 4,096.
            blocks = -(-n_users // self.user_block)
            even = -(-n_users // blocks)
            self.user_block = min(self.user_block, -(-even // 8) * 8)
        self._num_blocks = -(-n_users // self.user_block)
        n_padded = self._num_blocks * self.user_block
        # Padding rows repeat a real user (so scores_fn sees valid ids) and are dropped later.
        padded_users = np.full(n_padded, users[0], np.int64)
        padded_users[:n_users] = users

        train_rows = row_of[train[:, 0]]
        keep = train_rows >= 0
        train_idx = _padded_rows(train_rows[keep], train[keep, 1], n_padded, self.num_items)
        target_idx = _padded_rows(row_of[targets[:, 0]], targets[:, 1], n_padded, self.num_items)

        self._user_ids = users
        self._num_positives = np.bincount(row_of[targets[:, 0]], minlength=n_users)
        shape = (self._num_blocks, self.user_block)
        if mesh is None:
            self._users_dev = jnp.asarray(padded_users.reshape(shape), jnp.int32)
            self._train_dev = jnp.asarray(train_idx.reshape(shape + train_idx.shape[1:]))
            self._targets_dev = jnp.asarray(target_idx.reshape(shape + target_idx.shape[1:]))
        else:
            from mirrorgrad_jax.sharding import place_user_blocks

            self._users_dev, self._train_dev, self._targets_dev = place_user_blocks(
                mesh,
                padded_users.reshape(shape).astype(np.int32),
                train_idx.reshape(shape + train_idx.shape[1:]),
                target_idx.reshape(shape + target_idx.shape[1:]),
            )
        self._block_fns: dict[ScoresFn, Callable[..., tuple[jax.Array, jax.Array]]] = {}

    @property
    def num_users(self) -> int:
        """The number of evaluated users."""
        return int(self._user_ids.size)

    @property
    def user_ids(self) -> np.ndarray:
        """The evaluated user ids, in order of first appearance in the targets."""
        return self._user_ids.copy()

    @property
    def num_positives(self) -> np.ndarray:
        """Per evaluated user, its number of target rows."""
        return self._num_positives.copy()

    def _block_fn(self, scores_fn: ScoresFn) -> Callable[..., tuple[jax.Array, jax.Array]]:
        fn = self._block_fns.get(scores_fn)
        if fn is None and self._mesh is not None:
            from mirrorgrad_jax.sharding import sharded_ranking_fn

            fn = self._block_fns[scores_fn] = sharded_ranking_fn(scores_fn, self._mesh, (self.user_block, self.num_items), self.k_max)
        if fn is None:
            block_shape = (self.user_block, self.num_items)
            k_max = self.k_max
            num_blocks = self._num_blocks

            def block(model_state, users, train_idx, target_idx, b):
                user_ids = users[b]
                scores = scores_fn(model_state, user_ids)
                if scores.shape != block_shape:
                    raise ValueError(
                        f"scores_fn returned shape {scores.shape}, expected (user_block, num_items) = {block_shape}"
                    )
                return masked_top_k_hits(scores, train_idx[b], target_idx[b], k_max)

            def every_block(model_state, users, train_idx, target_idx):
                # One program loops over the blocks: what scores_fn computes from the model
                # state alone (a model's full forward pass, the item-side tables) does not
                # depend on the block, and XLA hoists it out of the loop, so it runs once per
                # evaluation instead of once per block (benchmarks/results/ranking.md).
                return jax.lax.map(lambda b: block(model_state, users, train_idx, target_idx, b), jnp.arange(num_blocks))

            fn = self._block_fns[scores_fn] = jax.jit(every_block)
        return fn

    def _run(self, scores_fn: ScoresFn, model_state: Any) -> tuple[np.ndarray, np.ndarray]:
        fn = self._block_fn(scores_fn)
        if self._mesh is None:
            top_items, hits = jax.device_get(fn(model_state, self._users_dev, self._train_dev, self._targets_dev))
            return top_items.reshape(-1, self.k_max)[: self.num_users], hits.reshape(-1, self.k_max)[: self.num_users]
        # Dispatch every block before reading any back, so the device never waits on the host.
        outs = [
            fn(model_state, self._users_dev, self._train_dev, self._targets_dev, np.int32(b))
            for b in range(self._num_blocks)
        ]
        outs = jax.device_get(outs)
        top_items = np.concatenate([o[0] for o in outs])[: self.num_users]
        hits = np.concatenate([o[1] for o in outs])[: self.num_users]
        return top_items, hits

    def top_k(self, scores_fn: ScoresFn, model_state: Any) -> np.ndarray:
        """The ``(num_users, max(topk))`` ranked item ids per evaluated user, train items masked.

        Args:
          scores_fn: as in :meth:`evaluate`.
          model_state: the first argument of ``scores_fn``.

        Returns:
          int32 item ids, rows in :attr:`user_ids` order, best first.
        """
        return self._run(scores_fn, model_state)[0]

    def evaluate(self, scores_fn: ScoresFn, model_state: Any, *, round_to: int | None = 4) -> dict[str, float]:
        """Runs the full-ranking evaluation and returns the metric dict.

        Args:
          scores_fn: ``scores_fn(model_state, user_ids)`` with ``user_ids`` int32
            ``(user_block,)`` returning ``(user_block, num_items)`` scores; pure and
            jittable. Use the same function object across calls to reuse the compiled
            block function.
          model_state: parameters and whatever else ``scores_fn`` reads (a pytree).
          round_to: decimals of each value (4, as the reference); None for full precision.

        Returns:
          ``{'recall@5': ..., ..., 'map@50': ...}`` as in :func:`ranking_metrics`.
        """
        _, hits = self._run(scores_fn, model_state)
        return ranking_metrics(hits, self._num_positives, self.topk, round_to=round_to)


@dataclasses.dataclass
class EarlyStopping:
    """Best-epoch tracking and patience, as the reference trainer.

    The reference selects on the valid ``recall@5`` (bigger is better) with patience
    20: an epoch improves only if its ROUNDED value (4 decimals) is strictly greater
    than the best so far (initially -1); training stops when more than ``patience``
    consecutive epochs did not improve, i.e. on the 21st.

    Attributes:
      metric: the key of the valid-metric dict to select on.
      patience: the reference's ``stopping_step``.
      best: the best (rounded) value so far.
      best_epoch: the epoch of ``best``; -1 before any update.
      bad_epochs: consecutive non-improving epochs since ``best_epoch``.
      round_to: decimals values are rounded to before comparing (None: as given).

    Example::

        stopper = EarlyStopping()
        for epoch in range(1000):
            ...
            if stopper.update(valid[stopper.metric], epoch):
                best_valid, best_test = valid, test
            if stopper.should_stop:
                break
    """

    metric: str = "recall@5"
    patience: int = 20
    best: float = -1.0
    best_epoch: int = -1
    bad_epochs: int = 0
    round_to: int | None = 4

    def update(self, value: float, epoch: int) -> bool:
        """Records one epoch's value; True when it is the new best (strictly greater)."""
        value = float(value if self.round_to is None else np.round(value, self.round_to))
        if value > self.best:
            self.best, self.best_epoch, self.bad_epochs = value, int(epoch), 0
            return True
        self.bad_epochs += 1
        return False

    @property
    def should_stop(self) -> bool:
        """True once more than ``patience`` consecutive epochs did not improve."""
        return self.bad_epochs > self.patience

    def to_dict(self) -> dict[str, Any]:
        """The state as a plain dict (for checkpoints)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, state: Mapping[str, Any]) -> EarlyStopping:
        """Rebuilds from :meth:`to_dict` output.

        Raises:
          ValueError: on a key that is not a field.
        """
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(state) - fields)
        if unknown:
            raise ValueError(f"unknown EarlyStopping keys {unknown}; allowed: {sorted(fields)}")
        return cls(**state)
