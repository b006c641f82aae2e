"""Full-ranking evaluation over a device mesh: users split over ``data``, items over ``model``.

:class:`~mirrorgrad_jax.evaluation.RankingEvaluator` calls these when it is given a mesh;
they give the same top-k lists as one device (ties toward the lower item id).
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from mirrorgrad_jax.devices.mesh import DATA, MODEL
from mirrorgrad_jax.evaluation.topk import MASK_SCORE

__all__ = ["place_user_blocks", "sharded_ranking_fn"]


def place_user_blocks(mesh: Mesh, *blocks: np.ndarray) -> tuple[jax.Array, ...]:
    """Evaluation index arrays ``(num_blocks, user_block, ...)`` with each block's users split over ``data``."""
    out = []
    for host in blocks:
        host = np.asarray(host)
        spec = PartitionSpec(None, DATA, *([None] * (host.ndim - 2)))
        out.append(jax.make_array_from_callback(host.shape, NamedSharding(mesh, spec), lambda index, h=host: h[index]))
    return tuple(out)


def sharded_ranking_fn(
    scores_fn: Callable[[Any, jax.Array], jax.Array], mesh: Mesh, block_shape: tuple[int, int], k: int
) -> Callable[..., tuple[jax.Array, jax.Array]]:
    """The evaluator's block function over a mesh: users over ``data``, items over ``model``.

    The model's ``scores_fn`` runs as one SPMD program and its ``(B, I)`` scores are
    constrained to ``(data, model)`` tiles, so no device ever holds more than
    ``B / data x ceil(I / model)`` scores. On each tile the user's train items (those in
    the tile's item range) are masked to :data:`~mirrorgrad_jax.evaluation.MASK_SCORE`
    and a local top-``k`` is taken; the ``model`` shards' lists are gathered and merged
    with a second top-``k``. Item columns that only pad ``I`` to a multiple of ``model``
    score ``-inf`` and never rank. Ties go to the lower item id, as in the one-device
    :func:`~mirrorgrad_jax.evaluation.masked_top_k_hits`: each local list is ordered that
    way and the merge keeps shards in item order.

    Args:
      scores_fn: ``scores_fn(model_state, users) -> (B, I)``.
      mesh: the ``(data, model)`` mesh; ``B`` must divide by its ``data`` size.
      block_shape: ``(B, I)``.
      k: list length (``<= I``).

    Returns:
      A jitted ``fn(model_state, users, train_idx, target_idx, b) -> (top_items, hits)``
      taking the evaluator's block arrays (see :func:`place_user_blocks`) and the block
      index; both outputs are ``(B, k)`` and replicated on every device.
    """
    users_per_block, num_items = block_shape
    data, model = int(mesh.shape[DATA]), int(mesh.shape[MODEL])
    if users_per_block % data:
        raise ValueError(f"user block {users_per_block} does not divide by data={data}")
    width = -(-num_items // model)
    padded = width * model
    k_local = min(k, width)

    def local(scores, train, targets):
        offset = jax.lax.axis_index(MODEL) * width
        rows = jnp.arange(scores.shape[0])[:, None]
        column = train - offset
        inside = (train >= 0) & (train < num_items) & (column >= 0) & (column < width)
        column = jnp.where(inside, column, width)  # out of this tile: dropped by the scatter
        masked = scores.at[rows, column].set(jnp.asarray(MASK_SCORE, scores.dtype), mode="drop")
        values, ids = jax.lax.top_k(masked, k_local)
        ids = ids.astype(jnp.int32) + offset.astype(jnp.int32)
        values = jax.lax.all_gather(values, MODEL, axis=1, tiled=True)
        ids = jax.lax.all_gather(ids, MODEL, axis=1, tiled=True)
        _, best = jax.lax.top_k(values, k)
        ids = jnp.take_along_axis(ids, best, axis=1)
        hits = jnp.any(ids[:, :, None] == targets[:, None, :], axis=-1)
        ids = jax.lax.all_gather(ids, DATA, axis=0, tiled=True)
        hits = jax.lax.all_gather(hits, DATA, axis=0, tiled=True)
        return ids, hits

    ranked = jax.shard_map(
        local,
        mesh=mesh,
        in_specs=(PartitionSpec(DATA, MODEL), PartitionSpec(DATA), PartitionSpec(DATA)),
        out_specs=(PartitionSpec(), PartitionSpec()),
        # The gathers leave every device with the same lists; the checker cannot see that.
        check_vma=False,
    )
    tiles = NamedSharding(mesh, PartitionSpec(DATA, MODEL))

    def block(model_state, users, train_idx, target_idx, b):
        scores = scores_fn(model_state, users[b])
        if scores.shape != tuple(block_shape):
            raise ValueError(f"scores_fn returned shape {scores.shape}, expected (user_block, num_items) = {tuple(block_shape)}")
        if padded != num_items:
            scores = jnp.pad(scores, ((0, 0), (0, padded - num_items)), constant_values=-jnp.inf)
        scores = jax.lax.with_sharding_constraint(scores, tiles)
        return ranked(scores, train_idx[b], target_idx[b])

    return jax.jit(block)
