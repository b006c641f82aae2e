"""ItemKNNCBF: content-based item kNN (as in Dacrema et al., RecSys 2019, "Are We Really Making Much Progress?").

The reference's ``itemknncbf.py``. A training-free baseline (``trainable = False``): the trainer runs one
evaluation, builds no optimizer and refuses Mirror Gradient (it has nothing to mirror).

Similarity (:func:`~mirrorgrad_jax.graph.knn_topk_shrink`, the reference's ``K_shrink``
graph) on the RAW features ``f_i = concat(image_i, text_i)`` (image first, as the
reference; one of them alone when the dataset has only one)::

    S_ij = f_i . f_j / (||f_i|| ||f_j|| + shrink)

keeping the ``knn_k`` largest VALUES of every row (the item itself is a candidate like any
other), not normalised. It is computed in row chunks and stored as neighbour lists
``idx (I, k)``, ``val (I, k)``; the ``I x I`` matrix never exists.

Scores ``R_train S``: the score of item ``j`` for user ``u`` is ``sum_{i in train(u)} S[i, j]``.
For a block of users the train items are read from a padded per-user matrix
``(U, max_train_items)`` (a constant), their ``S`` rows gathered and scattered into the
``(B, I)`` block, which is the only users x items array ever built (the reference
materialises the dense ``U x I`` score matrix at construction).

``loss`` returns the constant 0.0 (no parameter, no gradient): the reference's
``calculate_loss`` returns 0 and its trainer skips the training epoch when ``req_training``
is False. Parameters: **0** here; the reference registers a 2-element dummy parameter
(``dummy_embeddings``) that nothing reads, so its count is 2.

Memory: the padded train-item matrix holds ``U x max_u |train(u)|`` int32; one scoring block
gathers ``B x max_u |train(u)| x k`` neighbour entries.
"""

from __future__ import annotations


import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from mirrorgrad_jax.config import NonNegativeFloat, PositiveInt, config_class
from mirrorgrad_jax.graph import knn_topk_shrink
from mirrorgrad_jax.models.inputs import image_and_text_features, modality_role_constraints, require_knn_k
from mirrorgrad_jax.models.interface import Constant, Recommender
from mirrorgrad_jax.models.registry import register

__all__ = ["ItemKNNCBF", "ItemKNNCBFConfig", "padded_train_items"]


@config_class
class ItemKNNCBFConfig:
    """Attributes:
    knn_k: similarity values kept per item, the item itself a candidate (10).
    shrink: added to the product of the feature norms in the similarity (10).
    image_modality: dataset modality in the image role ("image"; "" leaves the role out).
    text_modality: dataset modality in the text role ("text"; "" leaves the role out).
    similarity_chunk_size: rows per similarity block when building the graph (2048; memory
      ``chunk * I`` floats, no effect on the result).
    """

    knn_k: PositiveInt = 10
    shrink: NonNegativeFloat = 10.0
    image_modality: str = "image"
    text_modality: str = "text"
    similarity_chunk_size: PositiveInt = 2048

    constraints = modality_role_constraints("ItemKNNCBF")


def padded_train_items(train: np.ndarray, num_users: int, pad: int) -> np.ndarray:
    """Every user's distinct train items as one row of a ``(U, max_len)`` int32 matrix.

    Args:
      train: ``(E, 2)`` int (user, item) pairs.
      num_users: U.
      pad: the value filling the rows past a user's items (use an id that is not an item).

    Returns:
      ``(U, max(1, max_u |train(u)|))`` int32, items of each row ascending, then ``pad``.
    """
    pairs = np.unique(np.asarray(train, np.int64)[:, :2], axis=0)  # sorted by user, then item
    counts = np.bincount(pairs[:, 0], minlength=num_users)
    width = max(1, int(counts.max(initial=0)))
    out = np.full((num_users, width), pad, np.int32)
    slot = np.arange(len(pairs)) - np.repeat(np.cumsum(counts) - counts, counts)
    out[pairs[:, 0], slot] = pairs[:, 1]
    return out


@register
class ItemKNNCBF(Recommender):
    """Training-free content kNN recommender; see the module docstring."""

    name = "itemknncbf"
    config_class = ItemKNNCBFConfig
    multimodal = True
    trainable = False

    def __init__(self, dataset, config: ItemKNNCBFConfig, *, rngs: nnx.Rngs):
        del rngs  # nothing random
        feats = image_and_text_features(dataset, config.image_modality, config.text_modality, "ItemKNNCBF")
        require_knn_k(config.knn_k, dataset.num_items, "ItemKNNCBF")
        self.config = config
        self.num_users, self.num_items = dataset.num_users, dataset.num_items
        features = np.concatenate([feats[role] for role in ("image", "text") if role in feats], axis=1)
        idx, val = knn_topk_shrink(features, config.knn_k, config.shrink, chunk_size=config.similarity_chunk_size)
        self.neighbour_idx, self.neighbour_val = Constant(idx), Constant(val)
        # Pad with num_items: past the end of the item ids, masked out in `scores`.
        self.user_items = Constant(jnp.asarray(padded_train_items(dataset.train, dataset.num_users, dataset.num_items)))

    def loss(self, batch: jax.Array, key: jax.Array) -> jax.Array:
        """The constant 0.0: nothing is trained (the trainer does not call this)."""
        del batch, key
        return jnp.zeros((), jnp.float32)

    def scores(self, users: jax.Array) -> jax.Array:
        """``(B, I)`` rows of ``R_train S``, built by scattering the users' neighbour lists."""
        items = self.user_items[...][users]  # (B, L)
        valid = items < self.num_items
        safe = jnp.where(valid, items, 0)
        cols = self.neighbour_idx[...][safe]  # (B, L, k)
        vals = jnp.where(valid[..., None], self.neighbour_val[...][safe], 0.0)
        rows = jnp.broadcast_to(jnp.arange(items.shape[0])[:, None, None], cols.shape)
        return jnp.zeros((items.shape[0], self.num_items), jnp.float32).at[rows, cols].add(vals)
