"""The full-ranking evaluator: every evaluated user scored against every item, on the device.

:class:`RankingEvaluator` does the host-side work once per split (which users, which
items to mask, which to count as hits) and then runs one jitted program over blocks of
users; only the ``(users, max(topk))`` hit matrix comes back for
:func:`~mirrorgrad_jax.evaluation.ranking_metrics`. With a mesh it ranks through
:mod:`~mirrorgrad_jax.evaluation.sharded` instead.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from mirrorgrad_jax.evaluation.metrics import DEFAULT_TOPK, check_topk, ranking_metrics
from mirrorgrad_jax.evaluation.sharded import place_user_blocks, sharded_ranking_fn
from mirrorgrad_jax.evaluation.topk import masked_top_k_hits

__all__ = ["RankingEvaluator", "ScoresFn", "SplitEvaluators"]

ScoresFn = Callable[[Any, jax.Array], jax.Array]


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
        (:func:`mirrorgrad_jax.evaluation.sharded_ranking_fn`); the same lists as one device.

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
        self.topk = check_topk(topk)
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

    def _program(self, scores_fn: ScoresFn) -> Callable[..., tuple[jax.Array, jax.Array]]:
        """The pure, unjitted program of one evaluation without a mesh: every block of users in one loop."""
        block_shape = (self.user_block, self.num_items)
        k_max = self.k_max
        num_blocks = self._num_blocks

        def block(model_state, users, train_idx, target_idx, b):
            user_ids = users[b]
            scores = scores_fn(model_state, user_ids)
            if scores.shape != block_shape:
                raise ValueError(f"scores_fn returned shape {scores.shape}, expected (user_block, num_items) = {block_shape}")
            return masked_top_k_hits(scores, train_idx[b], target_idx[b], k_max)

        def every_block(model_state, users, train_idx, target_idx):
            # One program loops over the blocks: what scores_fn computes from the model
            # state alone (a model's full forward pass, the item-side tables) does not
            # depend on the block, and XLA hoists it out of the loop, so it runs once per
            # evaluation instead of once per block (benchmarks/results/ranking.md).
            return jax.lax.map(lambda b: block(model_state, users, train_idx, target_idx, b), jnp.arange(num_blocks))

        return every_block

    def _inputs(self) -> tuple[jax.Array, jax.Array, jax.Array]:
        return self._users_dev, self._train_dev, self._targets_dev

    def _block_fn(self, scores_fn: ScoresFn) -> Callable[..., tuple[jax.Array, jax.Array]]:
        fn = self._block_fns.get(scores_fn)
        if fn is None:
            if self._mesh is not None:
                fn = sharded_ranking_fn(scores_fn, self._mesh, (self.user_block, self.num_items), self.k_max)
            else:
                fn = jax.jit(self._program(scores_fn))
            self._block_fns[scores_fn] = fn
        return fn

    def _trim(self, top_items: np.ndarray, hits: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The padded device output of :meth:`_program` as ``(num_users, k_max)`` rows."""
        return top_items.reshape(-1, self.k_max)[: self.num_users], hits.reshape(-1, self.k_max)[: self.num_users]

    def _run(self, scores_fn: ScoresFn, model_state: Any) -> tuple[np.ndarray, np.ndarray]:
        fn = self._block_fn(scores_fn)
        if self._mesh is None:
            return self._trim(*jax.device_get(fn(model_state, *self._inputs())))
        # Dispatch every block before reading any back, so the device never waits on the host.
        outs = [fn(model_state, *self._inputs(), np.int32(b)) for b in range(self._num_blocks)]
        outs = jax.device_get(outs)
        top_items = np.concatenate([o[0] for o in outs])[: self.num_users]
        hits = np.concatenate([o[1] for o in outs])[: self.num_users]
        return top_items, hits

    def _metrics(self, hits: np.ndarray, round_to: int | None) -> dict[str, float]:
        return ranking_metrics(hits, self._num_positives, self.topk, round_to=round_to)

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
        return self._metrics(hits, round_to)


class SplitEvaluators:
    """Several splits' full ranking (valid and test after every epoch) as one compiled program.

    The trainer ranks valid and test with the same parameters after every epoch. Run as two
    :class:`RankingEvaluator` calls, that is two programs to compile (their shapes differ)
    and, for a model whose scores need a full forward pass, that pass twice. Here one
    jitted program holds every split's block loop: one compilation per ``scores_fn``, and
    XLA may share the state-only part of the forward between the splits. Each split's
    metrics are those of its own :meth:`RankingEvaluator.evaluate` (the same ops on the
    same shapes; ``tests/test_evaluation.py`` checks it to the bit).

    With a mesh the splits are ranked one after the other through their sharded programs.

    Args:
      evaluators: the splits' evaluators, e.g. ``(valid, test)``; all on the same device
        placement (all with or all without a mesh).

    Raises:
      ValueError: no evaluators, or some with a mesh and some without.
    """

    def __init__(self, *evaluators: RankingEvaluator):
        if not evaluators:
            raise ValueError("SplitEvaluators needs at least one RankingEvaluator")
        meshes = {e._mesh is None for e in evaluators}
        if len(meshes) > 1:
            raise ValueError("SplitEvaluators: either every evaluator has a mesh or none has")
        self.evaluators = tuple(evaluators)
        self._fns: dict[ScoresFn, Callable[..., Any]] = {}

    def _joint_fn(self, scores_fn: ScoresFn) -> Callable[..., Any]:
        fn = self._fns.get(scores_fn)
        if fn is None:
            programs = tuple(e._program(scores_fn) for e in self.evaluators)

            def every_split(model_state, inputs):
                return tuple(program(model_state, *split) for program, split in zip(programs, inputs))

            fn = self._fns[scores_fn] = jax.jit(every_split)
        return fn

    def evaluate(self, scores_fn: ScoresFn, model_state: Any, *, round_to: int | None = 4) -> tuple[dict[str, float], ...]:
        """Every split's metric dict, in the order the evaluators were given.

        Args:
          scores_fn: as in :meth:`RankingEvaluator.evaluate`; one program is compiled per
            function object.
          model_state: the first argument of ``scores_fn``.
          round_to: decimals of each value (4, as the reference); None for full precision.

        Returns:
          One ``{'recall@5': ..., ...}`` dict per evaluator.
        """
        if self.evaluators[0]._mesh is not None:
            return tuple(e.evaluate(scores_fn, model_state, round_to=round_to) for e in self.evaluators)
        inputs = tuple(e._inputs() for e in self.evaluators)
        outs = jax.device_get(self._joint_fn(scores_fn)(model_state, inputs))
        return tuple(e._metrics(e._trim(*out)[1], round_to) for e, out in zip(self.evaluators, outs))
