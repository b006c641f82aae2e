"""LGMRec (Guo et al., AAAI 2024, "LGMRec: Local and Global Graph Learning for Multimodal Recommendation").

Upstream MMRec's ``lgmrec.py`` (it is not in the Mirror Gradient reference's zoo). Notation:
``A`` the ``N x N`` ``D^-1/2 A D^-1/2`` user-item graph (binary degrees + 1e-7,
:func:`~mirrorgrad_jax.graph.normalized_bipartite_adjacency`), ``R`` the ``U x I`` 0/1
interaction matrix of the train pairs, ``deg_u`` a user's number of train items,
``rownorm`` torch's ``F.normalize`` and ``tau = 0.2`` (the reference hard-codes it for the
Gumbel-softmax and the contrastive loss alike). For each modality ``m`` (image ``v``, text
``t``) the FROZEN feature table ``X_m (I, F_m)`` has a projection ``W_m (F_m, d)`` and a
hyperedge matrix ``H_m (F_m, hyper_num)``.

Local embeddings:

* collaborative graph embedding (CGE): with ``cf_model="lightgcn"`` the mean of
  ``E, A E, ..., A^{n_ui_layers} E`` for ``E = [E_u; E_i]``; with ``"mf"`` ``E`` itself;
* modality graph embedding (MGE): items ``f_m = X_m W_m``, users the DEGREE-NORMALISED SUM of
  their items' rows ``R f_m / (deg_u + 1e-7)``; then ``n_mm_layers`` products with ``A``
  (the last output, not a mean);
* ``local = CGE + rownorm(MGE_v) + rownorm(MGE_t)``.

Global (hypergraph) embeddings, per modality:

* hyperedge dependencies: item logits ``X_m H_m (I, hyper_num)``, user logits
  ``R (X_m H_m)`` (a SUM over the user's items); each goes through
  ``gumbel_softmax(., tau, hard=False)`` along the hyperedges: ``softmax((logits + g) / tau)``
  with ``g`` standard Gumbel noise;
* ``nn.Dropout(1 - keep_rate)`` on each of the four assignment matrices (an independent
  inverted-dropout mask each; training only);
* the HGNN layer on the CGE item rows ``x``: ``n_hyper_layer`` times ``lat = H_i^T x``,
  ``x = H_i lat``, ``users = H_u lat``; ``GHE_m = [users; x]``.
* ``final = local + alpha * rownorm(GHE_v + GHE_t)``; scores ``final_u . final_i``.

Loss, on the batch ``(u, i+, i-)`` (``B`` rows)::

    -mean logsigmoid(u.i+ - u.i-)
    + cl_weight * [ssl(GHE_v[u], GHE_t[u], GHE_t users) + ssl(GHE_v[i+], GHE_t[i+], GHE_t items)]
    + reg_weight * (||u||_F + ||i+||_F + ||i-||_F) / B

``ssl`` is the reference's ``ssl_triple_loss`` (:func:`hyperedge_contrastive_loss`): rows
L2-normalised, ``-log(exp(s_pos / tau) / sum_all exp(s / tau))`` SUMMED over the batch rows,
the negatives being every user (item) row of the other modality's hypergraph embedding.
The regulariser is MMRec's: NON-squared Frobenius norms of the batch's final rows, over
the batch size.

Randomness. Training draws the Gumbel noise and the dropout masks from the ``loss`` key (the
Mirror Gradient second pass gets its own). The reference's ``full_sort_predict`` calls
``forward()`` under ``model.eval()``: ``nn.Dropout`` is then off, but ``F.gumbel_softmax``
has no notion of train/eval and still samples noise, so its evaluation is STOCHASTIC (a
fresh draw at every call: every block of users, validation and test apart). Kept by default
(``eval_gumbel_noise=True``), made reproducible: ``pre_epoch`` draws ``eval_noise_seed``, an
:class:`~mirrorgrad_jax.models.EpochSample` that checkpoints keep, and ``scores`` draws the
noise from it alone. The evaluation after an epoch therefore uses one noise draw for all
its blocks and for both splits, a new draw each epoch, and a checkpoint re-evaluates to
exactly its run's numbers. Early stopping then selects on noisy validation numbers, as
the reference's does. The seed is drawn whatever the option, so the option changes
nothing in training. ``eval_gumbel_noise=False`` is the deterministic alternative:
``softmax(logits / tau)`` without noise at evaluation.

Modalities: both roles are required (:func:`~mirrorgrad_jax.models.inputs.image_and_text_roles`;
a dataset whose only other modality can play the image role is used with a warning).
The reference does have an ``else`` branch for one modality (``all_embs = cge_embs``), but it
cannot run: ``forward`` then returns the list ``[uv_hyper_embs, iv_hyper_embs, ut_hyper_embs,
it_hyper_embs]`` whose names were only assigned in the two-modality branch, which raises an
``UnboundLocalError`` in training and in ``full_sort_predict`` alike (before
``calculate_loss`` would reach its unpacking). Its intent, CGE alone, would be LightGCN
without features, and no hyperedge contrastive term can be formed from one modality, so a
one-modality (or feature-less) dataset is refused with a ``ConfigError`` naming what is
missing.

Parameters (the reference's count: ``d(U + I) + sum_m F_m (d + hyper_num)``, 2,000,320 on
Baby); the feature tables are frozen constants (``from_pretrained(freeze=True)``), every
trainable matrix starts xavier-uniform. ``feat_embed_dim`` is not an option: it must equal
``embedding_size`` (the MGE rows are added to the CGE rows).

Deliberate differences (no effect on the maths): ``ssl`` is computed as ``logsumexp(s / tau)
- s_pos / tau`` (the reference's ``exp`` form cannot overflow here, |s| <= 1, but the two
round differently); the projection and the hyperedge matrix of a modality are applied as
one product ``X_m [W_m | H_m]``, and the user sums of both modalities as one segment sum.
The reference builds ``R`` from the raw interaction COO, which would count a repeated
pair twice in the user logits; the datasets here refuse repeated pairs.
"""

from __future__ import annotations

from typing import Annotated, Literal

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from mirrorgrad_jax.models.initializers import xavier_uniform
from mirrorgrad_jax.models.inputs import (
    image_and_text_features,
    image_and_text_roles,
    modality_role_constraints,
)
from mirrorgrad_jax.models.interface import Constant, EpochSample, Recommender
from mirrorgrad_jax.models.kernels import dense, pairwise_scores, rownorm
from mirrorgrad_jax.models.losses import bpr_log_likelihood, frobenius
from mirrorgrad_jax.models.registry import register

from mirrorgrad_jax.config import (
    NonNegativeFloat,
    NonNegativeInt,
    PositiveFloat,
    PositiveInt,
    Range,
    config_class,
)
from mirrorgrad_jax.graph import (
    CooAdjacency,
    layer_mean_propagate,
    normalized_bipartite_adjacency,
    propagate,
)
from mirrorgrad_jax.graph.coo import DEGREE_EPS

__all__ = ["LGMRec", "LGMRecConfig", "gumbel_softmax", "hyperedge_contrastive_loss", "hypergraph_layers"]

_ROLES = ("image", "text")


@config_class
class LGMRecConfig:
    """Attributes:
    embedding_size: d of the id tables, the modality projections and the hypergraph
      embeddings (64; the reference's ``feat_embed_dim`` must equal it).
    cf_model: the collaborative graph embedding: ``"lightgcn"`` (the reference's setting)
      or ``"mf"`` (the id tables themselves).
    n_ui_layers: LightGCN layers of the CGE (2).
    n_mm_layers: products of the modality embeddings with the user-item graph (2).
    n_hyper_layer: HGNN layers (Baby 1; sports 1, clothing 2). At least 1: the reference's
      layer returns nothing defined with 0.
    hyper_num: hyperedges per modality (Baby 4; sports 4, clothing 64).
    keep_rate: keep probability of the dropout on the hyperedge assignment matrices
      (Baby 0.5; sports 0.4, clothing 0.2).
    alpha: weight of the global (hypergraph) embeddings (Baby 0.3; sports 0.6, clothing 0.2).
    cl_weight: weight of the hyperedge contrastive loss (1e-4).
    reg_weight: weight of the non-squared norm regulariser (1e-6).
    tau: temperature of the Gumbel-softmax and of the contrastive loss (0.2, hard-coded in
      the reference).
    eval_gumbel_noise: True (the reference's): evaluation samples Gumbel noise, as
      ``F.gumbel_softmax`` does under ``model.eval()``, from the seed ``pre_epoch`` stores
      (reproducible); False: noise-free ``softmax(logits / tau)`` at evaluation.
    image_modality: dataset modality in the image role ("image"; when the dataset has no such
      modality but the text one and exactly one other, that other one is used, with a warning).
    text_modality: dataset modality in the text role ("text"; required).
    """

    embedding_size: PositiveInt = 64
    cf_model: Literal["lightgcn", "mf"] = "lightgcn"
    n_ui_layers: NonNegativeInt = 2
    n_mm_layers: NonNegativeInt = 2
    n_hyper_layer: PositiveInt = 1
    hyper_num: PositiveInt = 4
    keep_rate: Annotated[float, Range(gt=0, le=1)] = 0.5
    alpha: NonNegativeFloat = 0.3
    cl_weight: NonNegativeFloat = 1e-4
    reg_weight: NonNegativeFloat = 1e-6
    tau: PositiveFloat = 0.2
    eval_gumbel_noise: bool = True
    image_modality: str = "image"
    text_modality: str = "text"

    constraints = modality_role_constraints("LGMRec", both=True)


def gumbel_softmax(logits: jax.Array, tau: float, key: jax.Array | None) -> jax.Array:
    """torch's ``F.gumbel_softmax(logits, tau, hard=False, dim=-1)``; ``key=None``: no noise.

    Args:
      logits: ``(..., K)``.
      tau: temperature.
      key: PRNG key of the standard Gumbel noise (torch draws ``-log(Exp(1))``, the same law).

    Returns:
      ``softmax((logits + g) / tau)`` along the last axis.
    """
    if key is not None:
        logits = logits + jax.random.gumbel(key, logits.shape, logits.dtype)
    return jax.nn.softmax(logits / tau, axis=-1)


def hypergraph_layers(item_edges: jax.Array, user_edges: jax.Array, items: jax.Array, n_layers: int) -> tuple[jax.Array, jax.Array]:
    """The reference's ``HGNNLayer``: ``n_layers`` times ``lat = H_i^T x; x = H_i lat; users = H_u lat``.

    Args:
      item_edges: ``(I, K)`` item-hyperedge assignments ``H_i``.
      user_edges: ``(U, K)`` user-hyperedge assignments ``H_u``.
      items: ``(I, d)`` item embeddings ``x``.
      n_layers: at least 1.

    Returns:
      ``(users (U, d), items (I, d))`` of the last layer.
    """
    if n_layers < 1:
        raise ValueError(f"hypergraph_layers needs n_layers >= 1, got {n_layers}")
    x = items
    for _ in range(n_layers):
        latent = item_edges.T @ x
        x = item_edges @ latent
        users = user_edges @ latent
    return users, x


def hyperedge_contrastive_loss(view1: jax.Array, view2: jax.Array, every: jax.Array, tau: float) -> jax.Array:
    """The reference's ``ssl_triple_loss``: InfoNCE of ``view1`` against all rows of ``every``, SUMMED.

    Every argument is L2-normalised per row (eps 1e-12); with ``s_pos = <v1_b, v2_b>`` and
    ``s = v1_b . every^T`` the loss is ``sum_b [logsumexp(s / tau) - s_pos / tau]``, i.e.
    ``-sum log(exp(s_pos / tau) / sum exp(s / tau))``.

    Args:
      view1: ``(B, d)`` anchors (one modality's rows of the batch).
      view2: ``(B, d)`` positives, row-aligned (the other modality's rows).
      every: ``(M, d)`` the other modality's whole table (every user, or every item).
      tau: temperature.

    Returns:
      The scalar loss (a sum over the ``B`` rows, not a mean).
    """
    a, b, c = rownorm(view1), rownorm(view2), rownorm(every)
    positive = jnp.sum(a * b, axis=-1) / tau
    total = jax.nn.logsumexp(pairwise_scores(a, c) / tau, axis=1)
    return jnp.sum(total - positive)


@register
class LGMRec(Recommender):
    """Local (collaborative + modality) and global (hypergraph) embeddings; see the module docstring."""

    name = "lgmrec"
    config_class = LGMRecConfig
    multimodal = True

    def __init__(self, dataset, config: LGMRecConfig, *, rngs: nnx.Rngs):
        image, text = image_and_text_roles(dataset, config.image_modality, config.text_modality, "LGMRec")
        feats = image_and_text_features(dataset, image, text, "LGMRec")
        self.config = config
        self.num_users, self.num_items = dataset.num_users, dataset.num_items
        d, k = config.embedding_size, config.hyper_num
        self.users = nnx.Param(xavier_uniform(rngs.params(), (dataset.num_users, d)))
        self.items = nnx.Param(xavier_uniform(rngs.params(), (dataset.num_items, d)))
        for role in _ROLES:
            table = feats[role]
            setattr(self, f"{role}_feat", Constant(jnp.asarray(table)))
            setattr(self, f"{role}_trs", nnx.Param(xavier_uniform(rngs.params(), (table.shape[1], d))))
            setattr(self, f"{role}_hyper", nnx.Param(xavier_uniform(rngs.params(), (table.shape[1], k))))

        adj = normalized_bipartite_adjacency(dataset.train, dataset.num_users, dataset.num_items)
        self.adj_rows, self.adj_cols, self.adj_values = (Constant(jnp.asarray(a)) for a in adj[:3])
        # R: the distinct train pairs sorted by user; 1 / (deg_u + eps) as the reference's num_inters.
        pairs = np.unique(np.asarray(dataset.train, np.int64), axis=0)
        self.inter_users = Constant(jnp.asarray(pairs[:, 0], jnp.int32))
        self.inter_items = Constant(jnp.asarray(pairs[:, 1], jnp.int32))
        degree = np.bincount(pairs[:, 0], minlength=dataset.num_users).astype(np.float32)
        self.inv_user_degree = Constant(jnp.asarray(1.0 / (degree + np.float32(DEGREE_EPS)), jnp.float32)[:, None])
        # The evaluation's Gumbel seed; redrawn by pre_epoch, kept by checkpoints.
        self.eval_noise_seed = EpochSample(jax.random.bits(rngs.params(), (), jnp.uint32))

    # -- epoch state ------------------------------------------------------------------

    def pre_epoch(self, rng: np.random.Generator) -> None:
        """Draws the seed of the Gumbel noise of the evaluation that follows this epoch.

        Drawn whatever ``eval_gumbel_noise`` says, so that the option leaves training unchanged.
        """
        self.eval_noise_seed = EpochSample(jnp.asarray(rng.integers(0, 2**32, dtype=np.uint32)))

    def evaluation_key(self) -> jax.Array:
        """The PRNG key of the evaluation's Gumbel noise (a function of ``eval_noise_seed`` only)."""
        return jax.random.key(self.eval_noise_seed[...], impl="threefry2x32")

    # -- forward --------------------------------------------------------------------

    def _adjacency(self) -> CooAdjacency:
        return CooAdjacency(self.adj_rows[...], self.adj_cols[...], self.adj_values[...], self.num_users + self.num_items)

    def _user_sums(self, item_rows: jax.Array) -> jax.Array:
        """``R @ item_rows``: each user's sum over its train items, ``(U, ...)``."""
        return jax.ops.segment_sum(
            item_rows[self.inter_items[...]], self.inter_users[...], num_segments=self.num_users, indices_are_sorted=True
        )

    def collaborative_embedding(self) -> jax.Array:
        """The CGE, ``(N, d)`` over users then items."""
        ego = jnp.concatenate([self.users[...], self.items[...]])
        if self.config.cf_model == "mf":
            return ego
        # A_sym equals its transpose entry by entry: the backward pass reuses the forward kernel.
        return layer_mean_propagate(self._adjacency(), ego, self.config.n_ui_layers, symmetric=True)

    def forward(self, gumbel_key: jax.Array | None, dropout_key: jax.Array | None) -> tuple[jax.Array, dict[str, jax.Array]]:
        """``(final (N, d), {"image": GHE_v (N, d), "text": GHE_t (N, d)})``.

        Args:
          gumbel_key: key of the Gumbel noise of the four assignment matrices (None: none),
            split in four: image items, image users, text items, text users.
          dropout_key: key of their dropout masks (None: no dropout, as under ``model.eval()``):
            one Bernoulli(``keep_rate``) draw of shape ``(2, U + I, hyper_num)``, image then
            text, users then items.
        """
        cfg = self.config
        d, k, u_n, i_n = cfg.embedding_size, cfg.hyper_num, self.num_users, self.num_items
        # Item side of both modalities in one table: [X_v W_v | X_v H_v | X_t W_t | X_t H_t].
        item_side = jnp.concatenate(
            [
                dense(getattr(self, f"{role}_feat")[...], jnp.concatenate([getattr(self, f"{role}_trs")[...], getattr(self, f"{role}_hyper")[...]], axis=1))
                for role in _ROLES
            ],
            axis=1,
        )
        user_side = self._user_sums(item_side)
        noise = jax.random.split(gumbel_key, 2 * len(_ROLES)) if gumbel_key is not None else [None] * (2 * len(_ROLES))
        if dropout_key is not None and cfg.keep_rate < 1.0:
            # One draw for the four matrices, each its own independent slice.
            keep = jax.random.bernoulli(dropout_key, cfg.keep_rate, (len(_ROLES), u_n + i_n, k))
        else:
            keep = None

        cge = self.collaborative_embedding()
        mge, ghe = [], {}
        for m, role in enumerate(_ROLES):
            start = m * (d + k)
            items_f, items_logits = item_side[:, start : start + d], item_side[:, start + d : start + d + k]
            users_f, users_logits = user_side[:, start : start + d] * self.inv_user_degree[...], user_side[:, start + d : start + d + k]
            mge.append(jnp.concatenate([users_f, items_f]))
            item_edges = gumbel_softmax(items_logits, cfg.tau, noise[2 * m])
            user_edges = gumbel_softmax(users_logits, cfg.tau, noise[2 * m + 1])
            if keep is not None:
                user_edges = jnp.where(keep[m, :u_n], user_edges / cfg.keep_rate, 0.0)
                item_edges = jnp.where(keep[m, u_n:], item_edges / cfg.keep_rate, 0.0)
            hyper_users, hyper_items = hypergraph_layers(item_edges, user_edges, cge[u_n:], cfg.n_hyper_layer)
            ghe[role] = jnp.concatenate([hyper_users, hyper_items])
        # Both modalities' MGE propagate as one (N, 2d) table: the columns do not mix.
        both = jnp.concatenate(mge, axis=1)
        for _ in range(cfg.n_mm_layers):
            both = propagate(self._adjacency(), both, symmetric=True)
        local = cge + rownorm(both[:, :d]) + rownorm(both[:, d:])
        final = local + cfg.alpha * rownorm(ghe["image"] + ghe["text"])
        return final, ghe

    # -- interface ------------------------------------------------------------------

    def loss_terms(self, batch: jax.Array, key: jax.Array) -> dict[str, jax.Array]:
        """The unweighted parts of the loss: ``bpr``, ``hcl`` (the two ``ssl`` sums) and ``reg``.

        ``key`` is split into the Gumbel key and the dropout key of :meth:`forward`.
        """
        gumbel_key, dropout_key = jax.random.split(key)
        return self.batch_terms(batch, *self.forward(gumbel_key, dropout_key))

    def batch_terms(self, batch: jax.Array, final: jax.Array, ghe: dict[str, jax.Array]) -> dict[str, jax.Array]:
        """:meth:`loss_terms` on the outputs of a given :meth:`forward`."""
        users, pos, neg = batch[0], batch[1], batch[2]
        u_n, tau = self.num_users, self.config.tau
        u, p, n = final[users], final[u_n + pos], final[u_n + neg]
        v, t = ghe["image"], ghe["text"]
        hcl = hyperedge_contrastive_loss(v[users], t[users], t[:u_n], tau) + hyperedge_contrastive_loss(
            v[u_n + pos], t[u_n + pos], t[u_n:], tau
        )
        return {
            "bpr": -bpr_log_likelihood(jnp.sum(u * p, -1), jnp.sum(u * n, -1)),
            "hcl": hcl,
            "reg": (frobenius(u) + frobenius(p) + frobenius(n)) / batch.shape[1],
        }

    def loss(self, batch: jax.Array, key: jax.Array) -> jax.Array:
        terms = self.loss_terms(batch, key)
        cfg = self.config
        return terms["bpr"] + cfg.cl_weight * terms["hcl"] + cfg.reg_weight * terms["reg"]

    def scores(self, users: jax.Array) -> jax.Array:
        key = self.evaluation_key() if self.config.eval_gumbel_noise else None
        final, _ = self.forward(key, None)
        return final[users] @ final[self.num_users :].T
