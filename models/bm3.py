"""BM3 (Zhou et al., 2023, "Bootstrap Latent Representations for Multi-modal Recommendation").

The reference's ``bm3.py``. A self-supervised model trained WITHOUT negatives (batches are ``(2, B)``
``[users; positives]``):

* LightGCN on ``A_sym`` (``n_layers`` layers, mean of the ``n_layers + 1`` outputs) gives
  ``u_g`` and ``i_g``; the item id table is added again as a residual, ``i_g += E_i``.
* Online branch: a shared predictor ``P`` (Linear d -> d) on ``u_g``, ``i_g`` and on the
  projected modality tables ``T = text_trs(text_emb)``, ``V = image_trs(image_emb)``.
* Target branch: ``u_g``, ``i_g``, ``T`` and ``V`` with a stop-gradient and ALWAYS-ON
  inverted dropout (``F.dropout`` without ``training=``) drawn from the ``loss`` key, so
  every training forward drops out its targets, the Mirror Gradient second pass with a
  fresh mask (it gets a fresh key). ``scores`` has no dropout (it uses no targets).
* Loss, with ``c(x, y)`` the batch mean of the cosine similarity (eps 1e-8 on each norm)::

      [1 - c(P u_g[u], i_tg[i])] + [1 - c(P i_g[i], u_tg[u])]
      + reg_weight * (||u_g||_F + ||i_g||_F) / I
      + cl_weight * ([1 - c(P T[i], i_tg[i])] + [1 - c(P T[i], T_tg[i])]
                     + [1 - c(P V[i], i_tg[i])] + [1 - c(P V[i], V_tg[i])])

  The regulariser is MMRec's ``EmbLoss`` on the FULL propagated tables (residual
  included): non-squared norms over all users and all items, divided by the number of
  rows of the last argument, ``I``.
* ``scores``: ``P(u_g)[u] . P(i_g)^T``, recomputed with the current parameters (no stale
  cache).

The raw feature tables ``image_emb`` (I, F_v) and ``text_emb`` (I, F_t) are initialised
from the dataset's features and are TRAINABLE (``nn.Embedding.from_pretrained(...,
freeze=False)`` in the reference).

Modalities: the reference reads ``image_feat.npy`` (``v_feat``) and ``text_feat.npy``
(``t_feat``) and works with either one alone. Here the two roles are filled by the
dataset modalities named ``config.image_modality`` / ``config.text_modality`` ("image" and
"text" by default; set them to use differently named modalities, or to ``""`` to leave a
role out). A named modality the dataset lacks is left out with a warning, as the reference
skips a missing feature file; a dataset with neither is refused with a ``ValueError``
naming what is missing and what is there. Other modalities are not used (also warned).

Parameters (the reference's count: ``d(U + I) + (d^2 + d) + sum_m [I F_m + F_m d + d]``, 85,983,488 on
sports): the same set as the reference; the reference registers nothing unused.

Implementation notes (no effect on the maths): the modality projections and their
dropout are computed on the batch's rows only (a row-wise Linear, and the dropout mask is
drawn for the full ``(I, d)`` table and gathered, so an item repeated in a batch shares
its mask exactly as in the reference).
"""

from __future__ import annotations


import jax
import jax.numpy as jnp
from flax import nnx

from mirrorgrad_jax.config import Fraction, NonNegativeFloat, NonNegativeInt, PositiveInt, config_class
from mirrorgrad_jax.graph import CooAdjacency, layer_mean_propagate, normalized_bipartite_adjacency
from mirrorgrad_jax.models.initializers import torch_linear_default, xavier_normal, xavier_uniform
from mirrorgrad_jax.models.inputs import image_and_text_features, modality_role_constraints
from mirrorgrad_jax.models.interface import Constant, Recommender
from mirrorgrad_jax.models.kernels import dense
from mirrorgrad_jax.models.losses import frobenius
from mirrorgrad_jax.models.registry import register

__all__ = ["BM3", "BM3Config"]

# torch.nn.functional.cosine_similarity clamps each norm at this value.
_COSINE_EPS = 1e-8


@config_class
class BM3Config:
    """Attributes:
    embedding_size: d, of the id tables, the predictor and the modality projections (64; the
      reference's ``feat_embed_dim`` is not read by BM3, which uses ``embedding_size``).
    n_layers: LightGCN layers on ``A_sym``; grid {1, 2}.
    dropout: always-on dropout probability of the stop-gradient targets; grid {0.3, 0.5}.
    reg_weight: weight of the EmbLoss on the full propagated tables; grid {0.1, 0.01}.
    cl_weight: weight of the four modality alignment terms (2.0).
    image_modality: dataset modality in the image role ("image"; "" leaves the role out).
    text_modality: dataset modality in the text role ("text"; "" leaves the role out).

    The reference has only the grid; the defaults here are its first values.
    """

    embedding_size: PositiveInt = 64
    n_layers: NonNegativeInt = 1
    dropout: Fraction = 0.3
    reg_weight: NonNegativeFloat = 0.1
    cl_weight: NonNegativeFloat = 2.0
    image_modality: str = "image"
    text_modality: str = "text"

    constraints = modality_role_constraints("BM3")


def _cosine_loss(online: jax.Array, target: jax.Array) -> jax.Array:
    """``1 - mean_b cos(online_b, target_b)`` with torch's per-norm clamp at 1e-8."""
    # A guarded sqrt keeps the gradient finite for an all-zero online row.
    norm_o = jnp.sqrt(jnp.maximum(jnp.sum(online * online, -1), 1e-30))
    norm_t = jnp.sqrt(jnp.sum(target * target, -1))
    cos = jnp.sum(online * target, -1) / (jnp.maximum(norm_o, _COSINE_EPS) * jnp.maximum(norm_t, _COSINE_EPS))
    return 1.0 - jnp.mean(cos)


@register
class BM3(Recommender):
    """Bootstrapped multimodal graph recommender; see the module docstring."""

    name = "bm3"
    config_class = BM3Config
    uses_negatives = False
    multimodal = True

    def __init__(self, dataset, config: BM3Config, *, rngs: nnx.Rngs):
        feats = image_and_text_features(dataset, config.image_modality, config.text_modality, "BM3")
        self.config = config
        self.num_users, self.num_items = dataset.num_users, dataset.num_items
        d = config.embedding_size
        self.users = nnx.Param(xavier_uniform(rngs.params(), (dataset.num_users, d)))
        self.items = nnx.Param(xavier_uniform(rngs.params(), (dataset.num_items, d)))
        # Linear(d, d): xavier-normal weight (symmetric in the fans), default bias.
        _, bias = torch_linear_default(rngs.params(), d, d)
        self.predictor_w = nnx.Param(xavier_normal(rngs.params(), (d, d)))
        self.predictor_b = nnx.Param(bias)
        self.modalities = tuple(role for role in ("text", "image") if role in feats)
        for role in self.modalities:
            table = feats[role]
            _, bias = torch_linear_default(rngs.params(), table.shape[1], d)
            # Fine-tuned raw feature table, initialised from the features.
            setattr(self, f"{role}_emb", nnx.Param(jnp.asarray(table)))
            setattr(self, f"{role}_trs_w", nnx.Param(xavier_normal(rngs.params(), (table.shape[1], d))))
            setattr(self, f"{role}_trs_b", nnx.Param(bias))
        adj = normalized_bipartite_adjacency(dataset.train, dataset.num_users, dataset.num_items)
        self.adj_rows, self.adj_cols, self.adj_values = Constant(jnp.asarray(adj.rows)), Constant(jnp.asarray(adj.cols)), Constant(jnp.asarray(adj.values))

    # -- pieces ---------------------------------------------------------------------

    def propagated(self) -> tuple[jax.Array, jax.Array]:
        """``(u_g (U, d), i_g (I, d))``: the LightGCN layer mean, items plus the id residual."""
        n = self.num_users + self.num_items
        adj = CooAdjacency(self.adj_rows[...], self.adj_cols[...], self.adj_values[...], n)
        x = jnp.concatenate([self.users[...], self.items[...]])
        # A_sym equals its transpose entry by entry: the backward pass reuses the forward kernel.
        out = layer_mean_propagate(adj, x, self.config.n_layers, symmetric=True)
        return out[: self.num_users], out[self.num_users :] + self.items[...]

    def _predict(self, x: jax.Array) -> jax.Array:
        return x @ self.predictor_w[...] + self.predictor_b[...]

    def _project(self, role: str, items: jax.Array) -> jax.Array:
        """``{role}_trs({role}_emb)`` on the given item rows."""
        table = getattr(self, f"{role}_emb")[...]
        return dense(table[items], getattr(self, f"{role}_trs_w")[...]) + getattr(self, f"{role}_trs_b")[...]

    def _keep_masks(self, key: jax.Array, users: jax.Array, items: jax.Array) -> list[jax.Array | None]:
        """Dropout keep masks of the batch's target rows: users, items, then each modality.

        One Bernoulli draw covers all the full tables stacked (``U + I * (1 + modalities)``
        rows): one random-bit kernel instead of one per table (cheaper to compile, same
        distribution). Rows are gathered from it, so a user or item repeated in the batch
        gets the same mask, as the reference's dropout on the full tables gives.
        """
        p = self.config.dropout
        if p == 0.0:
            return [None] * (2 + len(self.modalities))
        u, i = self.num_users, self.num_items
        keep = jax.random.bernoulli(key, 1.0 - p, (u + i * (1 + len(self.modalities)), self.config.embedding_size))
        return [keep[users], keep[u + items]] + [keep[u + (1 + m) * i + items] for m in range(len(self.modalities))]

    def _target(self, x: jax.Array, keep: jax.Array | None) -> jax.Array:
        """The stop-gradient target ``F.dropout(x, p)`` (always on, inverted scaling)."""
        x = jax.lax.stop_gradient(x)
        if keep is None:
            return x
        return jnp.where(keep, x / (1.0 - self.config.dropout), 0.0)

    # -- interface ------------------------------------------------------------------

    def loss(self, batch, key):
        cfg = self.config
        users, items = batch[0], batch[1]
        u_g, i_g = self.propagated()
        keep_u, keep_i, *keep_mod = self._keep_masks(key, users, items)
        u_tg = self._target(u_g[users], keep_u)
        i_tg = self._target(i_g[items], keep_i)
        u_on, i_on = self._predict(u_g[users]), self._predict(i_g[items])
        align = _cosine_loss(u_on, i_tg) + _cosine_loss(i_on, u_tg)
        reg = (frobenius(u_g) + frobenius(i_g)) / self.num_items
        cl = 0.0
        for role, keep in zip(self.modalities, keep_mod):
            feat = self._project(role, items)
            feat_on = self._predict(feat)
            feat_tg = self._target(feat, keep)
            cl = cl + _cosine_loss(feat_on, i_tg) + _cosine_loss(feat_on, feat_tg)
        return align + cfg.reg_weight * reg + cfg.cl_weight * cl

    def scores(self, users):
        u_g, i_g = self.propagated()
        return self._predict(u_g[users]) @ self._predict(i_g).T
