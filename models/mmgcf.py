"""MMGCF (MMRec's ``mmgcf.py``, UMAP 2026: "Multimodal Graph Collaborative Filtering for
Recommendation with Graph Convolutional Networks"; the reference file names no authors).

LightGCN on the user-item graph, then a LATE fusion of each item's propagated ID embedding
with projections of its frozen modality features. Users get no modality information.

Forward on an adjacency ``A`` (``n = n_ui_layers``, ``E = [E_u; E_i]`` the ID tables):

* ``[u; i] = mean(E, A E, ..., A^n E)`` (LightGCN, the ``n + 1`` outputs averaged);
* ``f_m = X_m W_m + b_m`` for each modality ``m`` present, image first, then text
  (``X_m`` the raw feature table, frozen; ``W_m`` a Linear to ``feat_embed_dim``);
  ``M`` is the number of modalities present (1 or 2);
* the item vector ``z`` fuses ``i`` with the ``f_m`` row by row. With ``fuse`` one of
  ``mean(t_1..t_k)``, ``sum(t_1..t_k)`` or ``concat: Linear([t_1 | ... | t_k])``
  (``fusion_mode``), the weighting (``weighting``) decides the terms:

  - ``equal``: ``g = f_1`` when ``M = 1``, else ``g = fuse(f_1, ..., f_M)`` (concat: the
    layer ``mm_concat``, ``M f -> f``); then ``z = fuse(i, g)`` (concat: ``id_mm_concat``,
    ``d + f -> d``). So mean gives ``(i + mean_m f_m) / 2``, sum gives ``i + sum_m f_m``;
  - ``alpha``: ``a = sigmoid(mm_alpha)``, a learnable scalar starting at 0 (``a = 0.5``);
    ``z = fuse(a i, (1 - a) f_1, ..., (1 - a) f_M)`` (concat: ``all_concat``,
    ``d + M f -> d``). Mean gives ``(a i + (1 - a) sum_m f_m) / (M + 1)``;
  - ``normalized``: ``z = fuse(M * i / ||i||, f_1 / ||f_1||, ..., f_M / ||f_M||)``, each row
    over ``max(||row||, 1e-12)`` (torch's ``F.normalize``; concat: ``all_concat``);

* ``score(u, item) = <u, z_item>``. Mean and sum add ``i`` to the ``f_m`` element-wise, so
  ``feat_embed_dim`` must equal ``embedding_size`` there (a declared config constraint);
  every concat layer maps back to ``embedding_size``.

Graphs: ``A_sym = D^-1/2 A D^-1/2`` over the distinct train pairs with binary degrees plus
1e-7 (:func:`~mirrorgrad_jax.graph.normalized_bipartite_adjacency`), used for RANKING
(``scores`` recomputes the forward on it with the current parameters: no stale cache);
and, for TRAINING, the per-epoch sample drawn by ``pre_epoch``: ``kept_edge_count(E,
dropout) = int(E (1 - dropout))`` distinct train edges drawn without replacement with
probability proportional to ``1 / sqrt((d_u + 1e-7)(d_i + 1e-7))`` (full-graph degrees),
re-normalised with the kept edges' own degrees and mirrored to both directions. That is
exactly the reference's ``pre_epoch_processing``, which is FREEDOM's line for line, so it is
:func:`~mirrorgrad_jax.graph.sample_edges_degree_sensitive` (Gumbel-top-k, the distribution
of ``torch.multinomial(w, keep)``). The two reference files differ only in the dtype of the
ones they count degrees with (float32 here, int64 in FREEDOM's), which gives the same
values. The count of kept edges is fixed, so the sampled arrays keep their shapes from
epoch to epoch. ``dropout == 0`` trains on ``A_sym`` itself, as the reference does. Both
graphs equal their transpose entry by entry and propagate with ``symmetric=True``.

Loss (on the sampled graph), for a batch of ``B`` triples ``(u, i+, i-)``:
``-mean log sigmoid(<u, z_i+> - <u, z_i->) + reg_weight * (||E_u[u]||^2 + ||E_i[i+]||^2 +
||E_i[i-]||^2) / (2 B)``: squared L2 on the INITIAL (un-propagated) ID rows of the batch
only; the projections, the concat layers and ``mm_alpha`` are not regularised.
:meth:`MMGCF.loss_terms` returns the two terms. The fusion is row-wise, so the loss fuses
only the batch's items (the reference fuses every item and indexes; same numbers).

Random: the ID tables (xavier-uniform) and every Linear (torch's default,
``U(+-1/sqrt(fan_in))`` for weight and bias) at construction; the edge sample in every
``pre_epoch`` (host numpy generator). One sample is drawn at construction so the model is
usable (and has its final shapes) before training; the reference has none until its first
``pre_epoch_processing``. ``loss`` draws nothing (its ``key`` is unused).

Modalities: the image and text roles (the reference's ``v_feat`` / ``t_feat``) are the
dataset modalities named ``image_modality`` / ``text_modality``; with one of them missing
the reference runs on the other alone (``M = 1``, a warning here), with neither the dataset
is refused. The feature tables are frozen (``Embedding.from_pretrained(freeze=True)``):
they are :class:`Constant`, unlike FREEDOM's fine-tuned tables.

Parameters: ``d (U + I) + sum_m (F_m f + f)``, plus 1 (``mm_alpha``) with ``alpha``
weighting, plus with concat fusion ``(M f + 1) f [M > 1] + (d + f + 1) d`` for ``equal``
or ``(d + M f + 1) d`` for ``alpha`` / ``normalized`` (``d = embedding_size``,
``f = feat_embed_dim``). The reference builds ALL its concat layers whatever the weighting
(``all_concat`` + ``mm_concat`` when ``M > 1`` + ``id_mm_concat``), so its printed count
with concat fusion is ``(d + M f + 1) d + (M f + 1) f [M > 1] + (d + f + 1) d`` on top of
the rest; the layers the weighting does not use get no gradient there (torch's Adam skips
them) and are not built here, which changes no number of the training.

Quirks: none that changes numbers was found: the code does what its comments and config
describe. Not implemented because the reference code does not implement them: the ``prod``
fusion its config comment mentions for ``equal`` weighting, and item-side dropout (the
config's ``dropout`` is the per-epoch EDGE dropout; the model has no ``nn.Dropout``). On
data with duplicate (user, item) rows the reference would count duplicates in the sampler's
degrees (it reads the raw interaction rows); here the distinct pairs are used, as for
``A_sym`` (MMRec's datasets have no duplicates).
"""

from __future__ import annotations

from typing import Literal

import jax
import jax.numpy as jnp
from flax import nnx
from mirrorgrad_jax.models.edge_dropout import EdgeDropoutGraphs
from mirrorgrad_jax.models.initializers import torch_linear_default, xavier_uniform
from mirrorgrad_jax.models.inputs import (
    image_and_text_features,
    modality_role_constraints,
)
from mirrorgrad_jax.models.interface import Constant, Recommender
from mirrorgrad_jax.models.kernels import dense, rownorm
from mirrorgrad_jax.models.losses import bpr_log_likelihood
from mirrorgrad_jax.models.registry import register

from mirrorgrad_jax.config import (
    Constraint,
    Fraction,
    NonNegativeFloat,
    NonNegativeInt,
    PositiveInt,
    config_class,
)
from mirrorgrad_jax.graph import (
    CooAdjacency,
    layer_mean_propagate,
)

__all__ = ["MMGCF", "MMGCFConfig"]


@config_class
class MMGCFConfig:
    """Attributes:
    embedding_size: d of the user and item ID tables (64).
    feat_embed_dim: output width of the image / text projections (64); must equal
      ``embedding_size`` unless ``fusion_mode`` is ``"concat"``.
    n_ui_layers: LightGCN layers on the user-item graph; grid {1, 2, 3}.
    reg_weight: weight of the squared L2 on the batch's initial ID rows; grid {0.1, 0.01, 1e-3, 1e-4}.
    fusion_mode: how item ID and modality vectors combine: ``mean``, ``sum`` or ``concat``
      (concatenation then a Linear back to ``embedding_size``).
    weighting: ``equal`` (modalities fused first, then with the ID vector), ``alpha``
      (learnable sigmoid gate ``a`` on the ID vector, ``1 - a`` on each modality) or
      ``normalized`` (every vector L2-normalised, the ID vector times the modality count).
    dropout: share of the distinct train edges dropped each epoch (degree-sensitive); 0 trains
      on the full graph; grid {0.2, 0.5, 0.8}.
    image_modality: dataset modality in the image role ("image"; "" leaves the role out).
    text_modality: dataset modality in the text role ("text"; "" leaves the role out).

    The reference reads every value from its config with no default in the code; the
    defaults here are its YAML's fixed values and the FIRST value of each grid.
    """

    embedding_size: PositiveInt = 64
    feat_embed_dim: PositiveInt = 64
    n_ui_layers: NonNegativeInt = 1
    reg_weight: NonNegativeFloat = 0.1
    fusion_mode: Literal["mean", "sum", "concat"] = "mean"
    weighting: Literal["equal", "alpha", "normalized"] = "equal"
    dropout: Fraction = 0.2
    image_modality: str = "image"
    text_modality: str = "text"

    constraints = (
        *modality_role_constraints("MMGCF"),
        Constraint(
            ("feat_embed_dim", "embedding_size", "fusion_mode"),
            lambda c: c.fusion_mode == "concat" or c.feat_embed_dim == c.embedding_size,
            "must have feat_embed_dim == embedding_size unless fusion_mode is 'concat' "
            "(mean and sum combine ID and modality vectors element-wise)",
        ),
    )


@register
class MMGCF(EdgeDropoutGraphs, Recommender):
    """LightGCN IDs late-fused with projected frozen item features; see the module docstring."""

    name = "mmgcf"
    config_class = MMGCFConfig
    multimodal = True
    uses_negatives = True

    def __init__(self, dataset, config: MMGCFConfig, *, rngs: nnx.Rngs):
        feats = image_and_text_features(dataset, config.image_modality, config.text_modality, "MMGCF")
        self.config = config
        self.num_users, self.num_items = dataset.num_users, dataset.num_items
        d, f = config.embedding_size, config.feat_embed_dim
        self.users = nnx.Param(xavier_uniform(rngs.params(), (dataset.num_users, d)))
        self.items = nnx.Param(xavier_uniform(rngs.params(), (dataset.num_items, d)))
        # The reference's order of the modality vectors: image, then text.
        self.modalities = tuple(role for role in ("image", "text") if role in feats)
        m = len(self.modalities)
        for role in self.modalities:
            setattr(self, f"{role}_feat", Constant(jnp.asarray(feats[role])))
            self._linear(f"{role}_trs", rngs, feats[role].shape[1], f)
        if config.weighting == "alpha":
            self.mm_alpha = nnx.Param(jnp.zeros((), jnp.float32))
        if config.fusion_mode == "concat":
            # Only the layers this weighting uses (the reference builds all three).
            if config.weighting == "equal":
                if m > 1:
                    self._linear("mm_concat", rngs, m * f, f)
                self._linear("id_mm_concat", rngs, d + f, d)
            else:
                self._linear("all_concat", rngs, d + m * f, d)

        # Full A_sym (ranking) and the per-epoch sampled graph (training).
        self.init_edge_dropout_graphs(dataset, "MMGCF", rngs)

    def _linear(self, name: str, rngs: nnx.Rngs, fan_in: int, fan_out: int) -> None:
        w, b = torch_linear_default(rngs.params(), fan_in, fan_out)
        setattr(self, f"{name}_w", nnx.Param(w))
        setattr(self, f"{name}_b", nnx.Param(b))

    def _apply_linear(self, name: str, x: jax.Array) -> jax.Array:
        return dense(x, getattr(self, f"{name}_w")[...]) + getattr(self, f"{name}_b")[...]

    # -- graphs ---------------------------------------------------------------------

    # -- forward --------------------------------------------------------------------

    def propagate(self, adjacency: CooAdjacency) -> tuple[jax.Array, jax.Array]:
        """LightGCN on ``adjacency``: ``(users (U, d), items (I, d))``, the mean of layers 0..n."""
        x = jnp.concatenate([self.users[...], self.items[...]])
        out = layer_mean_propagate(adjacency, x, self.config.n_ui_layers, symmetric=True)
        return out[: self.num_users], out[self.num_users :]

    def modality_vectors(self, items: jax.Array) -> list[jax.Array]:
        """``[X_m[items] W_m + b_m]`` for the modalities present, image first."""
        return [self._apply_linear(f"{role}_trs", getattr(self, f"{role}_feat")[...][items]) for role in self.modalities]

    def _combine(self, parts: list[jax.Array], layer: str) -> jax.Array:
        mode = self.config.fusion_mode
        if mode == "mean":
            return jnp.mean(jnp.stack(parts), axis=0)
        if mode == "sum":
            return jnp.sum(jnp.stack(parts), axis=0)
        return self._apply_linear(layer, jnp.concatenate(parts, axis=-1))

    def fuse(self, id_rows: jax.Array, items: jax.Array) -> jax.Array:
        """The fused item vectors ``z`` of ``items`` from their propagated ID rows ``id_rows``."""
        feats = self.modality_vectors(items)
        weighting = self.config.weighting
        if weighting == "alpha":
            a = jax.nn.sigmoid(self.mm_alpha[...])
            return self._combine([id_rows * a] + [v * (1.0 - a) for v in feats], "all_concat")
        if weighting == "normalized":
            return self._combine([rownorm(id_rows) * len(feats)] + [rownorm(v) for v in feats], "all_concat")
        mm = feats[0] if len(feats) == 1 else self._combine(feats, "mm_concat")
        return self._combine([id_rows, mm], "id_mm_concat")

    def forward(self, adjacency: CooAdjacency) -> tuple[jax.Array, jax.Array]:
        """``(users (U, d), fused items (I, d))`` on ``adjacency``."""
        users, items = self.propagate(adjacency)
        return users, self.fuse(items, jnp.arange(self.num_items))

    # -- interface ------------------------------------------------------------------

    def loss_terms(self, batch: jax.Array) -> tuple[jax.Array, jax.Array]:
        """``(BPR, L2)`` on the sampled graph; the loss is ``BPR + reg_weight * L2``."""
        users, pos, neg = batch[0], batch[1], batch[2]
        all_users, all_items = self.propagate(self.masked_adjacency())
        both = jnp.concatenate([pos, neg])
        z = self.fuse(all_items[both], both)
        u = all_users[users]
        bpr = -bpr_log_likelihood(jnp.sum(u * z[: pos.shape[0]], -1), jnp.sum(u * z[pos.shape[0] :], -1))
        e_u, e_pos, e_neg = self.users[...][users], self.items[...][pos], self.items[...][neg]
        l2 = (jnp.sum(e_u * e_u) + jnp.sum(e_pos * e_pos) + jnp.sum(e_neg * e_neg)) / (2 * users.shape[0])
        return bpr, l2

    def loss(self, batch, key):
        bpr, l2 = self.loss_terms(batch)
        return bpr + self.config.reg_weight * l2

    def scores(self, users):
        all_users, all_items = self.forward(self.full_adjacency())
        return all_users[users] @ all_items.T
