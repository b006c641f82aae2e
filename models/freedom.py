"""FREEDOM (Zhou & Shen, 2023, "A Tale of Two Graphs: Freezing and Denoising Graph Structures").

The reference's ``freedom.py``. Two graphs:

* a FROZEN item-item graph ``mm_adj = w K_bin(image) + (1 - w) K_bin(text)`` with
  ``w = mm_image_weight`` (0.1), built once at init from the RAW feature tables
  (:func:`~mirrorgrad_jax.graph.knn_item_graph` with binary values, ``knn_k`` neighbours
  including the item itself, then :func:`~mirrorgrad_jax.graph.combine_knn`); it is never
  rebuilt, even though the feature tables are fine-tuned;
* the user-item graph, DENOISED every epoch: ``pre_epoch`` keeps
  ``kept_edge_count(E, dropout)`` distinct train edges sampled without replacement with
  probability proportional to ``1 / sqrt(d_u d_i)`` (degree-sensitive pruning) and
  re-normalises them with their new degrees (:func:`~mirrorgrad_jax.graph.sample_edges_degree_sensitive`).
  The number kept is fixed, so the arrays keep their shapes between epochs. With
  ``dropout == 0`` the full ``A_sym`` is used, as in the reference.

``forward(adj)``: ``h = mm_adj^{n_mm_layers} E_i``; LightGCN with ``n_ui_layers`` layers on
``adj`` (mean of the ``n_ui_layers + 1`` outputs) gives ``u``, ``i``; items are ``i + h``.
The kNN product and the full-graph product (evaluation) run the CSR kernel of
:func:`~mirrorgrad_jax.graph.propagate` forward and backward (the user-item graphs are
symmetric; the kNN lists' backward reads them by column through a stored order); the
sampled training graph, under two entries per row, keeps the segment sum, which is
faster there (``benchmarks/results/propagation.md``).

Loss (on the sampled graph): ``-mean logsigmoid(u.i+ - u.i-)`` plus
``reg_weight * [BPR(u, T[i+], T[i-]) + BPR(u, V[i+], V[i-])]`` with ``T = text_trs(text_emb)``
and ``V = image_trs(image_emb)``. ``reg_weight`` weights these modality BPR losses, it is
not an L2: with ``reg_weight = 0`` the feature tables and projections get zero gradient
(they stay at their init).

``scores``: ``forward(A_sym)`` on the FULL, unpruned normalised graph, recomputed with the
current parameters (no stale cache).

Modalities: as in BM3 (:func:`~mirrorgrad_jax.models.bm3.image_and_text_features`), the
image and text roles are filled by the dataset modalities named ``image_modality`` /
``text_modality`` ("image" / "text" by default). With only one of them present the
reference uses that modality's kNN graph alone (weight 1) and only its BPR term; a dataset
with neither is refused with a ``ValueError`` naming what is missing.

Parameters (the reference's count: ``d(U + I) + sum_m [I F_m + F_m d + d]``, 85,979,328 on sports); the
projections use torch's default Linear init. The reference's ``lambda_coeff``,
``cf_model`` and ``degree_ratio`` are read but unused (its yaml's ``weight_size`` is not even
read), and
``feat_embed_dim`` must equal ``embedding_size`` (user vectors are dotted with the
projected features), so none of them is an option here.
"""

from __future__ import annotations


import jax
import jax.numpy as jnp
from flax import nnx

from mirrorgrad_jax.config import Fraction, NonNegativeFloat, NonNegativeInt, PositiveInt, UnitInterval, config_class
from mirrorgrad_jax.graph import (
    CooAdjacency,
    combine_knn,
    knn_column_order,
    knn_item_graph,
    knn_propagate,
    layer_mean_propagate,
)
from mirrorgrad_jax.models.edge_dropout import EdgeDropoutGraphs
from mirrorgrad_jax.models.initializers import add_feature_projection, xavier_uniform
from mirrorgrad_jax.models.inputs import image_and_text_features, modality_role_constraints, require_knn_k
from mirrorgrad_jax.models.interface import Constant, Recommender
from mirrorgrad_jax.models.kernels import dense
from mirrorgrad_jax.models.losses import bpr_log_likelihood
from mirrorgrad_jax.models.registry import register

__all__ = ["FREEDOM", "FREEDOMConfig"]


@config_class
class FREEDOMConfig:
    """Attributes:
    embedding_size: d of the id tables and of the modality projections (64).
    n_mm_layers: propagations of the item ids on the frozen kNN graph (1).
    n_ui_layers: LightGCN layers on the user-item graph (2).
    knn_k: neighbours per item in each modality's kNN graph, the item itself a candidate (10).
    mm_image_weight: weight of the image kNN graph; the text graph gets ``1 - w`` (0.1).
    dropout: share of train edges pruned every epoch; grid {0.8, 0.9}.
    reg_weight: weight of the modality BPR losses; grid {0, 1e-5, 1e-4, 1e-3}.
    image_modality: dataset modality in the image role ("image"; "" leaves the role out).
    text_modality: dataset modality in the text role ("text"; "" leaves the role out).

    The reference has only the grid for dropout and reg_weight; the defaults here are
    0.8 and 1e-4 (1e-4 rather than the grid's first value 0, which would leave the feature
    branches untrained).
    """

    embedding_size: PositiveInt = 64
    n_mm_layers: NonNegativeInt = 1
    n_ui_layers: NonNegativeInt = 2
    knn_k: PositiveInt = 10
    mm_image_weight: UnitInterval = 0.1
    dropout: Fraction = 0.8
    reg_weight: NonNegativeFloat = 1e-4
    image_modality: str = "image"
    text_modality: str = "text"

    constraints = modality_role_constraints("FREEDOM")


@register
class FREEDOM(EdgeDropoutGraphs, Recommender):
    """Frozen multimodal item graph + degree-sensitive edge pruning; see the module docstring."""

    name = "freedom"
    config_class = FREEDOMConfig
    multimodal = True

    def __init__(self, dataset, config: FREEDOMConfig, *, rngs: nnx.Rngs):
        feats = image_and_text_features(dataset, config.image_modality, config.text_modality, "FREEDOM")
        require_knn_k(config.knn_k, dataset.num_items, "FREEDOM")
        self.config = config
        self.num_users, self.num_items = dataset.num_users, dataset.num_items
        d = config.embedding_size
        self.users = nnx.Param(xavier_uniform(rngs.params(), (dataset.num_users, d)))
        self.items = nnx.Param(xavier_uniform(rngs.params(), (dataset.num_items, d)))
        self.modalities = tuple(role for role in ("text", "image") if role in feats)
        for role in self.modalities:
            add_feature_projection(self, role, feats[role], d, rngs.params())

        # Frozen item-item graph from the raw features.
        weights = {"image": config.mm_image_weight, "text": 1.0 - config.mm_image_weight} if len(feats) == 2 else {r: 1.0 for r in feats}
        graphs = [(knn_item_graph(feats[role], config.knn_k, values="binary"), weights[role]) for role in ("image", "text") if role in feats]
        mm_idx, mm_val = combine_knn(graphs)
        self.mm_idx, self.mm_val = Constant(jnp.asarray(mm_idx, jnp.int32)), Constant(jnp.asarray(mm_val, jnp.float32))
        # The lists' slots by neighbour: the backward pass of the kNN product runs the CSR
        # kernel on the transposed lists (see knn_propagate).
        self.mm_order = Constant(jnp.asarray(knn_column_order(mm_idx)))

        # Full A_sym (evaluation) and the per-epoch sampled graph (training).
        self.init_edge_dropout_graphs(dataset, "FREEDOM", rngs)

    # -- graphs ---------------------------------------------------------------------

    # -- forward --------------------------------------------------------------------

    def forward(self, adjacency: CooAdjacency) -> tuple[jax.Array, jax.Array]:
        """``(users (U, d), items (I, d))`` propagated on ``adjacency``, items plus the kNN term."""
        h = self.items[...]
        for _ in range(self.config.n_mm_layers):
            h = knn_propagate(self.mm_idx[...], self.mm_val[...], h, column_order=self.mm_order[...])
        x = jnp.concatenate([self.users[...], self.items[...]])
        # Both graphs (full A_sym, sampled and mirrored) equal their transpose entry by entry.
        out = layer_mean_propagate(adjacency, x, self.config.n_ui_layers, symmetric=True)
        return out[: self.num_users], out[self.num_users :] + h

    def _project(self, role: str, items: jax.Array) -> jax.Array:
        """``{role}_trs({role}_emb)`` on the given item rows."""
        table = getattr(self, f"{role}_emb")[...]
        return dense(table[items], getattr(self, f"{role}_trs_w")[...]) + getattr(self, f"{role}_trs_b")[...]

    # -- interface ------------------------------------------------------------------

    def loss(self, batch, key):
        users, pos, neg = batch[0], batch[1], batch[2]
        all_users, all_items = self.forward(self.masked_adjacency())
        u = all_users[users]
        bpr = -bpr_log_likelihood(jnp.sum(u * all_items[pos], -1), jnp.sum(u * all_items[neg], -1))
        modal = 0.0
        for role in self.modalities:
            both = self._project(role, jnp.concatenate([pos, neg]))
            f_pos, f_neg = both[: pos.shape[0]], both[pos.shape[0] :]
            modal = modal - bpr_log_likelihood(jnp.sum(u * f_pos, -1), jnp.sum(u * f_neg, -1))
        return bpr + self.config.reg_weight * modal

    def scores(self, users):
        all_users, all_items = self.forward(self.full_adjacency())
        return all_users[users] @ all_items.T
