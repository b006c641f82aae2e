"""DRAGON (Zhou et al., 2023) as the reference implements it (``dragon.py`` of the Mirror Gradient repository, built on MMRec).

The modality branches are DualGNN's (:class:`~mirrorgrad_jax.models.dualgnn.ModalityGCN`:
trainable ``pref_m (U, d)``, MLP ``F_m -> 4d -> d`` on the RAW, constant feature table,
rownorm, two symmetric-normalised hops, ``x + h + h1``). Then, with ``image`` = v and
``text`` = t:

* fusion ``"cat"``: ``rep = [rep_v || rep_t]`` (``(U + I, 2d)``); users
  ``[w_u0 v_u || w_u1 t_u]`` with ``weight_u (U, 2, 1)`` softmax-initialised;
* items: ``item_rep + mm_adj^L item_rep`` (``L = n_mm_layers = 1``), where ``mm_adj`` is
  the frozen item-item graph ``0.1 K_bin(image) + 0.9 K_bin(text)`` built once from the raw
  features (top-``knn_k`` cosine neighbours, self included, each value ``1/(k + 1e-7)``),
  stored as ``(I, 2k)`` neighbour lists;
* users: ``user_rep + sum_k W[u, k] user_rep[nbr[u, k]]`` over the 40 co-occurrence
  neighbours re-drawn every epoch in :meth:`pre_epoch` (as DualGNN);
* score = dot product; loss ``-mean log2 sigmoid(s_pos - s_neg) + reg_weight *
  (mean(pref_v[users]^2) + mean(pref_t[users]^2) + mean(weight_u^2))``.

With a single modality the fusion is that modality's representation and ``mm_adj`` its
own K_bin (``weight_u`` then only appears in the regulariser, as in the reference).

Evaluation (``stale_eval``): the Mirror-Gradient reference's ``full_sort_predict``
RECOMPUTES the forward pass with the current parameters and the current epoch's
user-graph sample, so the default is ``stale_eval=False``. Upstream MMRec instead ranks
with the representation cached by the last training forward; ``stale_eval=True``
reproduces that (a :class:`TrainingCache` written in ``loss``).

Parameters: the reference registers but never uses (in any forward pass)
``image_embedding``/``text_embedding`` (``I x F_m`` copies of the features, used only to
build ``mm_adj``), ``image_trs``/``text_trs`` (``F_m -> feat_embed_dim``), ``MLP_v``,
``MLP_t`` (``d x d``), ``MLP_user`` (``2d -> d``) and ``weight_i (I, 2, 1)``; its "dropped
item" edge lists are never read either. None of them is created here, so the count is
``sum_m (dU + 4d F_m + 4d + 4d*d + d) + 2U`` instead of the reference's 88,387,398 on sports
(here 5,808,028 with d = 64).
"""

from __future__ import annotations


import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from mirrorgrad_jax.config import NonNegativeFloat, NonNegativeInt, PositiveInt, UnitInterval, config_class
from mirrorgrad_jax.graph import UserGraphTies, combine_knn, knn_item_graph, knn_propagate
from mirrorgrad_jax.models.inputs import require_knn_k
from mirrorgrad_jax.models.interface import Constant, TrainingCache
from mirrorgrad_jax.models.registry import register
from mirrorgrad_jax.models.dualgnn import AggrMode, DualGraphRecommender, aggregate_user_neighbours, log2_bpr_loss

__all__ = ["DRAGON", "DRAGONConfig"]


@config_class
class DRAGONConfig:
    """Attributes:
    embedding_size: latent size d of each modality branch (64; MLP width 4d; the
      fused representation has 2d entries).
    reg_weight: weight of the squared-mean regulariser; grid {0.1, 0.01, 1e-3, 1e-4, 1e-5};
      default 1e-3, a middle value of the grid (MMRec gives only the grid; its first value, 0.1, is not the default here).
    knn_k: neighbours per item in each modality's kNN graph, the item itself a candidate (10).
    mm_image_weight: weight of the image kNN graph in ``mm_adj`` (0.1; text gets 1 - it).
    n_mm_layers: propagation steps on ``mm_adj`` for the item side (1).
    aggr_mode: GCN aggregation, ``"add"`` (reference) or ``"mean"``.
    num_user_neighbours: k of the per-epoch user-graph sample (40, a code constant).
    stale_eval: False (the MG reference: recompute for ranking) or True (upstream MMRec:
      rank with the representation cached by the last training forward).
    user_graph_ties: the order of users tied on their co-occurrence count when the user
      graph is built from the train pairs: ``"lowest_id"`` (default) or ``"torch_cpu"``
      (MMRec's preprocessing script's order), as in :class:`~models.dualgnn.DualGNNConfig`.
    """

    embedding_size: PositiveInt = 64
    reg_weight: NonNegativeFloat = 1e-3
    knn_k: PositiveInt = 10
    mm_image_weight: UnitInterval = 0.1
    n_mm_layers: NonNegativeInt = 1
    aggr_mode: AggrMode = "add"
    num_user_neighbours: PositiveInt = 40
    stale_eval: bool = False
    user_graph_ties: UserGraphTies = "lowest_id"


def multimodal_knn_graph(features, modalities, k: int, image_weight: float) -> tuple[jax.Array, jax.Array]:
    """``mm_adj`` as ``(I, m k)`` lists: ``w K_bin(image) + (1 - w) K_bin(text)``, or one modality's K_bin."""
    require_knn_k(k, len(features[modalities[0]]), "DRAGON")
    graphs = {m: knn_item_graph(np.asarray(features[m], np.float32), k, values="binary") for m in modalities}
    if len(graphs) == 1:
        return next(iter(graphs.values()))
    return combine_knn([(graphs["image"], image_weight), (graphs["text"], 1.0 - image_weight)])


@register
class DRAGON(DualGraphRecommender):
    """Dual user-user and item-item graphs over DualGNN's modality GCNs; see the module docstring."""

    name = "dragon"
    config_class = DRAGONConfig
    multimodal = True

    def __init__(self, dataset, config: DRAGONConfig, *, rngs: nnx.Rngs):
        n, d = self._init_branches("DRAGON", dataset, config, rngs)
        self._init_graphs(dataset, config, rngs, n)
        mm_idx, mm_val = multimodal_knn_graph(dataset.features, self.modalities, int(config.knn_k), float(config.mm_image_weight))
        self.mm_idx, self.mm_val = Constant(jnp.asarray(mm_idx)), Constant(jnp.asarray(mm_val))
        if config.stale_eval:
            self.cache = TrainingCache(jnp.zeros((n, d * len(self.modalities)), jnp.float32))

    def representation(self) -> jax.Array:
        """``[user_rep; item_rep]``, shape ``(U + I, 2d)`` (``d`` with one modality)."""
        u = self.num_users
        edges = (self.senders[...], self.receivers[...], self.edge_norm[...])
        reps = [self._gcn(m)(*edges, self.config.aggr_mode) for m in self.modalities]
        if len(reps) == 1:
            user_rep, item_rep = reps[0][:u], reps[0][u:]
        else:
            v, t = reps
            item_rep = jnp.concatenate([v[u:], t[u:]], axis=1)
            w = self.weight_u[...]
            user_rep = jnp.concatenate([w[:, 0] * v[:u], w[:, 1] * t[:u]], axis=1)
        h = item_rep
        for _ in range(self.config.n_mm_layers):
            h = knn_propagate(self.mm_idx[...], self.mm_val[...], h)
        item_rep = item_rep + h
        user_rep = user_rep + aggregate_user_neighbours(user_rep, self.user_nbr_idx[...], self.user_nbr_weights[...])
        return jnp.concatenate([user_rep, item_rep])

    def loss(self, batch, key):
        users = batch[0]
        result = self.representation()
        if self.config.stale_eval:
            self.cache[...] = jax.lax.stop_gradient(result)
        u, pos, neg = result[users], result[self.num_users + batch[1]], result[self.num_users + batch[2]]
        bpr = log2_bpr_loss(jnp.sum(u * pos, -1), jnp.sum(u * neg, -1))
        reg = sum(jnp.mean(self._gcn(m).pref[...][users] ** 2) for m in self.modalities)
        reg = reg + jnp.mean(self.weight_u[...] ** 2)
        return bpr + self.config.reg_weight * reg

    def scores(self, users):
        result = self.cache[...] if self.config.stale_eval else self.representation()
        return result[users] @ result[self.num_users :].T
