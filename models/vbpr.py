"""VBPR (He & McAuley, 2016) exactly as the reference implements it (``vbpr.py`` of the Mirror Gradient repository, built on MMRec).

Item vector = [Q_i || W x_i + b] (2d), user vector = P_u (2d), score = dot product,
where x_i concatenates the item's modality features (text first, then image, then any
other modality by name: the reference's order). Loss: ``-mean log(1e-10 + sigmoid(diff))``
plus ``reg_weight * (||P_B|| + ||I+_B|| + ||I-_B||) / B`` with NON-squared norms.

How the projection is computed (``projection``; the model and its gradients are the
same either way, to float32 rounding):

* ``"distinct_items"`` (default): projects each DISTINCT item of the batch once. A
  Baby batch of 2048 positives and 2048 negatives holds ~2,870 distinct items, so the
  projection (the gather of feature rows and the two matmuls, the bulk of an epoch)
  runs on a static ``3/4`` of the batch rows; a batch with more distinct items than
  that takes the ``batch_items`` path (a ``lax.cond``, exact either way). The forward
  values are those of ``batch_items`` bit for bit; in the gradient of ``W`` the
  contributions of a repeated item are summed before the matmul instead of inside it
  (float32 rounding, ~1e-6 relative; tested).
* ``"batch_items"``: projects the batch's 2B feature rows, ~1.7x fewer FLOPs than the
  reference at Baby scale.
* ``"all_items"``: ``X @ W`` for every item, as the reference.
Every path projects through :func:`~mirrorgrad_jax.models.dense`, whose weight
gradient avoids XLA's slow transposed product on the CPU (``benchmarks/results/dense_backward.md``).
On the 2-core CPU ``batch_items`` and ``all_items`` trained a Baby-scale epoch in the
same ~2.4 s (side by side, 2026-11-27, before ``dense``): the gather of 4096 x 4480
feature rows cost about what the skipped FLOPs saved; ``distinct_items`` gathers and
multiplies a quarter fewer rows (``benchmarks/results/vs_reference.md``).
"""

from __future__ import annotations

import typing
from typing import Literal

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from mirrorgrad_jax.config import NonNegativeFloat, PositiveInt, config_class
from mirrorgrad_jax.models.initializers import xavier_normal, xavier_uniform
from mirrorgrad_jax.models.inputs import require_features
from mirrorgrad_jax.models.interface import Constant, Recommender
from mirrorgrad_jax.models.kernels import dense
from mirrorgrad_jax.models.losses import frobenius
from mirrorgrad_jax.models.registry import register


Projection = Literal["distinct_items", "batch_items", "all_items"]
PROJECTIONS: tuple[str, ...] = typing.get_args(Projection)


def project_distinct(x: jax.Array, items: jax.Array, w: jax.Array, b: jax.Array, capacity: int) -> jax.Array:
    """``x[items] @ w + b``, projecting each distinct id once when there are at most ``capacity``.

    The distinct ids are found by a sort (no dynamic shapes): they fill the first slots of
    a ``capacity``-row block (the rest repeat row 0 and get no gradient), which is
    projected and gathered back to ``items``' order. With more distinct ids than
    ``capacity`` the plain ``x[items] @ w + b`` runs instead (``lax.cond``).

    Args:
      x: ``(I, F)`` rows to project.
      items: ``(n,)`` int ids into ``x``.
      w: ``(F, d)``.
      b: ``(d,)``.
      capacity: static number of rows projected on the distinct path.

    Returns:
      ``(n, d)``, row ``r`` equal to ``x[items[r]] @ w + b``.
    """
    n = items.shape[0]
    if capacity >= n:
        return dense(x[items], w) + b
    order = jnp.argsort(items)
    ordered = items[order]
    starts = jnp.concatenate([jnp.ones((1,), bool), ordered[1:] != ordered[:-1]])
    slot_of_ordered = jnp.cumsum(starts, dtype=jnp.int32) - 1
    slot = jnp.zeros((n,), jnp.int32).at[order].set(slot_of_ordered, unique_indices=True)

    def distinct(_):
        ids = jnp.zeros((capacity,), items.dtype).at[slot_of_ordered].set(ordered, mode="drop")
        return (dense(x[ids], w) + b)[slot]

    def every_row(_):
        return dense(x[items], w) + b

    if capacity >= x.shape[0]:  # every id fits: no fallback needed
        return distinct(None)
    return jax.lax.cond(slot_of_ordered[-1] < capacity, distinct, every_row, None)


def modality_order(names) -> list[str]:
    """The reference's concatenation order: text, image, then the rest alphabetically."""
    first = [m for m in ("text", "image") if m in names]
    return first + sorted(set(names) - set(first))


@config_class
class VBPRConfig:
    """Attributes:
    embedding_size: d; user vectors have 2d entries (64 in the reference).
    reg_weight: lambda of the non-squared EmbLoss; grid {2.0, 1.0, 0.1, 0.01, 1e-3, 1e-4, 1e-5};
      default 1e-3, a middle value of the grid (MMRec gives only the grid; its first value, 2.0, is not the default here).
    projection: how the item features are projected (the same model either way; see the
      module docstring): ``"distinct_items"`` (default), ``"batch_items"`` or ``"all_items"``
      (the reference's).
    """

    embedding_size: PositiveInt = 64
    reg_weight: NonNegativeFloat = 1e-3
    projection: Projection = "distinct_items"


@register
class VBPR(Recommender):
    """Visual(-and-text) BPR; see the module docstring."""

    name = "vbpr"
    config_class = VBPRConfig
    multimodal = True

    def __init__(self, dataset, config: VBPRConfig, *, rngs: nnx.Rngs):
        require_features(dataset, "VBPR")
        self.config = config
        d = config.embedding_size
        feats = np.concatenate([np.asarray(dataset.features[m], np.float32) for m in modality_order(dataset.features)], axis=1)
        self.features = Constant(jnp.asarray(feats))
        self.users = nnx.Param(xavier_uniform(rngs.params(), (dataset.num_users, 2 * d)))
        self.items = nnx.Param(xavier_uniform(rngs.params(), (dataset.num_items, d)))
        # torch Linear(F, d) weight is (d, F) with xavier-normal: symmetric in fan, so (F, d) here.
        self.proj_w = nnx.Param(xavier_normal(rngs.params(), (feats.shape[1], d)))
        self.proj_b = nnx.Param(jnp.zeros((d,), jnp.float32))

    def _item_vectors(self, items: jax.Array | None = None) -> jax.Array:
        q, x = self.items[...], self.features[...]
        if items is not None and self.config.projection == "distinct_items":
            # 3/4 of the rows: a Baby batch has ~70% distinct items (see the module docstring).
            capacity = min(x.shape[0], items.shape[0] - items.shape[0] // 4)
            projected = project_distinct(x, items, self.proj_w[...], self.proj_b[...], capacity)
            return jnp.concatenate([q[items], projected], axis=-1)
        if items is not None and self.config.projection == "batch_items":
            return jnp.concatenate([q[items], dense(x[items], self.proj_w[...]) + self.proj_b[...]], axis=-1)
        vectors = jnp.concatenate([q, dense(x, self.proj_w[...]) + self.proj_b[...]], axis=-1)
        return vectors if items is None else vectors[items]

    def loss(self, batch, key):
        b = batch.shape[1]
        u = self.users[...][batch[0]]
        both = self._item_vectors(jnp.concatenate([batch[1], batch[2]]))
        pos, neg = both[:b], both[b:]
        diff = jnp.sum(u * pos, -1) - jnp.sum(u * neg, -1)
        bpr = -jnp.mean(jnp.log(1e-10 + jax.nn.sigmoid(diff)))
        reg = (frobenius(u) + frobenius(pos) + frobenius(neg)) / b
        return bpr + self.config.reg_weight * reg

    def scores(self, users):
        return self.users[...][users] @ self._item_vectors().T
